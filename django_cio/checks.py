"""System checks for ``settings.CUSTOMERIO`` (``manage.py check``).

The shape of the setting is checked by ``conf.find_problems``, the same code that makes
``get_settings()`` fail at run time, so the message seen at start-up is the one a worker would
otherwise raise at 3 a.m. This module adds what needs the rest of the project: credentials for
the chosen backend, the cache alias, the backend import.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import conf

MAIL_BACKEND = "django_cio.mail.EmailBackend"
# Caches identify dedup can keep its memory in (it needs Redis scripts).
_REDIS_CACHES = ("django_redis.", "django.core.cache.backends.redis.RedisCache")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(problem.message, id=f"django_cio.{problem.id}") for problem in conf.find_problems()
    ]
    config = conf.merged_settings()
    backend = _backend(config)
    if backend is None:
        messages.append(Error(
            f"CUSTOMERIO['BACKEND'] {config['BACKEND']!r} cannot be imported", id="django_cio.E007"
        ))
    # A backend that delivers inline (locmem, console, null) never talks to Customer.io.
    if backend is not None and not getattr(backend, "delivers_inline", False):
        messages += _missing_credentials(config)
        messages += _missing_app_key(config)
    if isinstance(config["ROUTER"], str) and _imported(config["ROUTER"]) is None:
        messages.append(Error(f"CUSTOMERIO['ROUTER'] {config['ROUTER']!r} cannot be imported",
                              id="django_cio.E029"))
    return messages + _check_cache(config)


def _missing_app_key(config: dict[str, Any]) -> list[CheckMessage]:
    """E032: Django's mail goes through django-cio, which has no App API key to send it."""
    if getattr(settings, "EMAIL_BACKEND", "") != MAIL_BACKEND or config.get("APP_API_KEY"):
        return []
    return [Error("CUSTOMERIO['APP_API_KEY'] missing: EMAIL_BACKEND is django-cio's, which "
                  "sends through Customer.io's App API with that key",
                  hint="Set it from the environment (the App API key, not API_KEY).",
                  id="django_cio.E032")]


def _missing_credentials(config: dict[str, Any]) -> list[CheckMessage]:
    """E002 for each workspace without its credentials, naming it."""
    workspaces = config["WORKSPACES"] if isinstance(config["WORKSPACES"], dict) else {}
    where = {"CUSTOMERIO": config, **{f"CUSTOMERIO['WORKSPACES'][{name!r}]": values
                                      for name, values in workspaces.items()
                                      if isinstance(values, dict)}}
    messages: list[CheckMessage] = []
    for setting, values in where.items():
        missing = [key for key in ("SITE_ID", "API_KEY") if not values.get(key)]
        if missing:
            messages.append(Error(
                f"{setting}[{', '.join(repr(key) for key in missing)}] missing: required by "
                f"{config['BACKEND']}",
                hint="Set them from the environment, or use the locmem/console/null backend.",
                id="django_cio.E002",
            ))
    return messages


def _backend(config: dict[str, Any]) -> Any:
    """The configured backend class, or None if it cannot be imported (E007)."""
    return _imported(config["BACKEND"])


def _imported(path: Any) -> Any:
    try:
        return import_string(path)
    except (ImportError, TypeError):
        return None


def _check_cache(config: dict[str, Any]) -> list[CheckMessage]:
    caches = getattr(settings, "CACHES", {})
    if not isinstance(config["CACHE"], str):
        return []  # already reported by find_problems
    if config["CACHE"] not in caches:
        return [Error(
            f"CUSTOMERIO['CACHE'] names the cache alias {config['CACHE']!r}, which is not in "
            "CACHES",
            id="django_cio.E006",
        )]
    if config["DEDUP_TTL"] and not str(caches[config["CACHE"]].get("BACKEND", "")).startswith(
            _REDIS_CACHES):
        return [Warning(
            f"The cache {config['CACHE']!r} is not a Redis cache: identify dedup is off, every "
            "identify is sent",
            hint="Point CUSTOMERIO['CACHE'] at a Redis cache (django-redis), "
            "or set CUSTOMERIO['DEDUP_TTL'] = 0 to turn dedup off.",
            id="django_cio.W001",
        )]
    return []


# Visibility timeouts the docs recommend for a Redis broker: above the longest countdown the
# delivery task asks of the broker, and short enough that a killed worker's messages come back
# within minutes.
_VISIBILITY_MAX = 900


@register(Tags.compatibility)
def check_broker(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from celery import current_app

    from .delivery.retry import MAX_COUNTDOWN

    url = str(current_app.conf.broker_url or "")
    if _is_celerys_default(current_app):
        return []  # not the project's app, nor its options: W005 says so
    if not url.startswith(("redis://", "rediss://", "sentinel://", "redis+socket://")):
        return []
    options = current_app.conf.broker_transport_options or {}
    visibility = options.get("visibility_timeout", 3600)
    if visibility < 2 * MAX_COUNTDOWN:
        return [Warning(
            f"The Redis broker's visibility_timeout ({visibility} s) is close to the longest "
            f"retry countdown django-cio asks of the broker ({MAX_COUNTDOWN} s): waiting "
            "messages would be redelivered early, and sent twice",
            hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': 300} "
            "(broker_transport_options in a Celery config).",
            id="django_cio.W002",
        )]
    if visibility > _VISIBILITY_MAX:
        return [Warning(
            f"The Redis broker's visibility_timeout is {visibility} s: a killed worker's "
            "Customer.io messages would wait that long before another worker gets them",
            hint="Set CELERY_BROKER_TRANSPORT_OPTIONS = {'visibility_timeout': 300} "
            "(broker_transport_options in a Celery config); django-cio parks longer waits in "
            "its Outbox table.",
            id="django_cio.W003",
        )]
    return []


@register(Tags.compatibility)
def check_control_queue(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from celery import current_app

    url = str(current_app.conf.broker_url or "")
    if _is_celerys_default(current_app) or not url.startswith(("amqp", "pyamqp")):
        return []
    if not current_app.conf.get("control_queue_exclusive"):  # False, or a Celery without it
        return []
    return [Warning(
        "A RabbitMQ worker's remote-control queue is exclusive to its connection: a worker cut "
        "from the broker (a partition, no FIN) exits when the link heals, since its dead "
        "connection still holds the queue (ResourceLocked)",
        hint="Set CELERY_CONTROL_QUEUE_EXCLUSIVE = False (control_queue_exclusive in a Celery "
        "config); the queue still expires 10 s after its worker is gone.",
        id="django_cio.W006",
    )]


def _is_celerys_default(app: Any) -> bool:
    """Whether ``app`` is the one Celery makes when the project loaded none."""
    return bool(app.main == "default")


@register(Tags.compatibility)
def check_celery_app(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The Celery app this process publishes with must be the project's: without it, Celery
    falls back to a default app on amqp://localhost, and ops wait there with no consumer."""
    from celery import current_app

    backend = _backend(conf.merged_settings())
    if backend is None or getattr(backend, "delivers_inline", False):
        return []  # E007, or nothing is published
    app = current_app._get_current_object()
    if _is_celerys_default(app):
        return [Warning(
            "No Celery app is loaded in this process: django-cio would publish with Celery's "
            f"default app, to {app.connection_for_write().as_uri()}",
            hint="Import your Celery app in your project package's __init__.py: "
            "from .celery import app as celery_app (see docs/quickstart.md).",
            id="django_cio.W005",
        )]
    wanted = getattr(settings, "CELERY_BROKER_URL", None)
    if isinstance(wanted, str) and wanted != app.conf.broker_url:
        return [Warning(
            f"The Celery app {app.main!r} publishes to {app.connection_for_write().as_uri()}, "
            "not to settings.CELERY_BROKER_URL",
            hint="Load the app's config from Django's settings: "
            "app.config_from_object('django.conf:settings', namespace='CELERY').",
            id="django_cio.W005",
        )]
    return []


_MIDDLEWARE = "django_cio.middleware.CustomerIOMiddleware"
_AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


@register(Tags.compatibility)
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if _MIDDLEWARE not in middleware or (
        _AUTH_MIDDLEWARE in middleware
        and middleware.index(_AUTH_MIDDLEWARE) < middleware.index(_MIDDLEWARE)
    ):
        return []
    return [Warning(
        f"{_MIDDLEWARE} comes before {_AUTH_MIDDLEWARE} (or that one is missing): "
        "request.cio cannot tell who is logged in, and tracks every visitor anonymously",
        hint=f"List {_AUTH_MIDDLEWARE} before {_MIDDLEWARE} in MIDDLEWARE.",
        id="django_cio.W004",
    )]


@register(Tags.compatibility)
def check_credentials(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Customer.io refused these credentials at the last try (remembered by the workers)."""
    if conf.find_problems():
        return []  # the settings' own errors come first
    from .credentials import refusal

    messages: list[CheckMessage] = []
    for name in conf.get_settings().workspace_names:
        refused = refusal(conf.get_settings(name))
        if refused:
            where = ("CUSTOMERIO" if name == conf.DEFAULT_WORKSPACE
                     else f"CUSTOMERIO['WORKSPACES'][{name!r}]")
            messages.append(Error(
                f"Customer.io refused {where}['SITE_ID'] / ['API_KEY'] (HTTP "
                f"{refused['status']}) when the workers last tried them; ops are kept until "
                "they work",
                hint="Check the workspace's Track API credentials (Settings > API Credentials).",
                id="django_cio.E008",
            ))
    return messages
