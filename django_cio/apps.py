import logging

from django.apps import AppConfig


class DjangoCIOConfig(AppConfig):
    name = "django_cio"
    verbose_name = "Customer.io"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Every connection the package makes, here and once (importing it connects nothing)."""
        from celery.signals import worker_init
        from django.contrib.auth.signals import user_logged_in, user_logged_out
        from django.core.signals import setting_changed

        # checks registers the system checks; tasks registers the Celery tasks with whatever
        # Celery app this process has (with or without autodiscover_tasks: a worker that did
        # not know ``deliver`` would drop its messages).
        from . import auth, checks, conf, objects, registry, tasks  # noqa: F401
        from .broker.redis import consume_atomically
        from .broker.relay import add_relay_step
        from .privacy import HIDE_PERSON_PATHS

        setting_changed.connect(conf.clear_cache, dispatch_uid="django_cio.conf")
        # urllib3 logs each request's path at DEBUG, and a v1 path holds the person id.
        logging.getLogger("urllib3.connectionpool").addFilter(HIDE_PERSON_PATHS)
        registry.connect_signals()
        objects.connect_signals()  # after the registry's: relationships follow identifies
        user_logged_in.connect(auth.on_login, dispatch_uid="django_cio.auth.login")
        user_logged_out.connect(auth.on_logout, dispatch_uid="django_cio.auth.logout")
        registry.autodiscover()
        # Every Celery worker relays the Outbox: no beat to wire, no process to add...
        worker_init.connect(add_relay_step, weak=False, dispatch_uid="django_cio.relay")
        # ... and takes from a Redis broker without the window in which kombu's consumer loses.
        worker_init.connect(consume_atomically, weak=False, dispatch_uid="django_cio.consume")
