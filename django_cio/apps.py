from django.apps import AppConfig


class DjangoCIOConfig(AppConfig):
    name = "django_cio"
    verbose_name = "Customer.io"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import auth, checks  # noqa: F401 - connect the auth signals, register checks
        from .registry import autodiscover

        autodiscover()
