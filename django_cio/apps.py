from django.apps import AppConfig


class DjangoCIOConfig(AppConfig):
    name = "django_cio"
    verbose_name = "Customer.io"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_init

        from . import auth, checks  # noqa: F401 - connect the auth signals, register checks
        from .broker.redis import consume_atomically
        from .registry import autodiscover
        from .relay import add_relay_step

        autodiscover()
        # Every Celery worker relays the Outbox: no beat to wire, no process to add.
        worker_init.connect(add_relay_step, weak=False, dispatch_uid="django_cio.relay")
        # ... and takes from a Redis broker without the window in which kombu's consumer loses.
        worker_init.connect(consume_atomically, weak=False, dispatch_uid="django_cio.consume")
