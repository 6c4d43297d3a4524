"""System checks for ``settings.CUSTOMERIO`` (``manage.py check``).

Each check reuses the parser that would fail at run time, so the message a user sees at
start-up is the one they would otherwise get at 3 a.m. from a worker.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from . import conf
from .exceptions import ConfigurationError

# Caches that live inside one process: identify dedup would only see its own process's sends.
_PROCESS_LOCAL_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)


def _error(exc: Exception, id: str) -> Error:
    return Error(str(exc), id=f"django_cio.{id}")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        cio = conf.get_settings()
    except ConfigurationError as exc:
        return [_error(exc, "E001")]

    messages: list[CheckMessage] = []
    if cio.needs_credentials:
        missing = [key for key in ("SITE_ID", "API_KEY") if not getattr(cio, key.lower())]
        if missing:
            messages.append(Error(
                f"CUSTOMERIO[{', '.join(repr(key) for key in missing)}] required by {cio.backend}",
                hint="Set them from the environment, or use the locmem/console/null backend.",
                id="django_cio.E002",
            ))
    if cio.region not in conf.REGION_URLS:
        messages.append(Error(
            f"CUSTOMERIO['REGION'] must be one of {sorted(conf.REGION_URLS)}, got {cio.region!r}",
            id="django_cio.E003",
        ))
    try:
        cio.rate  # noqa: B018 - parsing is the check
    except ConfigurationError as exc:
        messages.append(_error(exc, "E004"))
    if cio.track_url is not None:
        try:
            conf.validate_track_url(cio.track_url)
        except ConfigurationError as exc:
            messages.append(_error(exc, "E005"))
    messages += _check_cache(cio)
    try:
        import_string(cio.backend)
    except ImportError:
        messages.append(Error(
            f"CUSTOMERIO['BACKEND'] {cio.backend!r} cannot be imported", id="django_cio.E007"
        ))
    return messages


def _check_cache(cio: conf.CIOSettings) -> list[CheckMessage]:
    caches = getattr(settings, "CACHES", {})
    if cio.cache not in caches:
        return [Error(
            f"CUSTOMERIO['CACHE'] names the cache alias {cio.cache!r}, which is not in CACHES",
            id="django_cio.E006",
        )]
    if cio.dedup_ttl and caches[cio.cache].get("BACKEND") in _PROCESS_LOCAL_CACHES:
        return [Warning(
            f"The cache {cio.cache!r} used for identify dedup is not shared between processes",
            hint="Point CUSTOMERIO['CACHE'] at a Redis cache (django-redis), "
            "or set CUSTOMERIO['DEDUP_TTL'] = 0 to turn dedup off.",
            id="django_cio.W001",
        )]
    return []
