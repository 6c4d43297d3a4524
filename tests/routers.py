class CustomerIOTablesOnDefault:
    """django-cio's tables (Outbox, DeadLetter) exist only in the "default" database."""

    def allow_migrate(self, db, app_label, **hints):
        if app_label == "django_cio":
            return db == "default"
        return None
