"""The one place that reads ``settings.CUSTOMERIO``.

``get_settings()`` merges the user's dict over ``DEFAULTS`` and returns a frozen
``CIOSettings``. It is read lazily and cached until Django's ``setting_changed`` fires, so
``override_settings(CUSTOMERIO=...)`` works in tests. Bad values raise ``ConfigurationError``
naming the key; ``checks.py`` turns the same errors into system-check messages.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from django.conf import settings

from .exceptions import ConfigurationError

REGION_URLS = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}

HTTP_BACKEND = "django_cio.backends.http.TrackAPIBackend"
# Backends that never talk to Customer.io, so they need no credentials.
OFFLINE_BACKENDS = {
    "django_cio.backends.locmem.LocMemBackend",
    "django_cio.backends.console.ConsoleBackend",
    "django_cio.backends.null.NullBackend",
}

DEFAULTS: dict[str, Any] = {
    "SITE_ID": None,
    "API_KEY": None,
    "REGION": "us",
    "TRACK_URL": None,
    "BACKEND": HTTP_BACKEND,
    "RATE_LIMIT": "80/s",
    "RATE_LIMIT_WORKERS": 4,
    "QUEUE": "customerio",
    "BATCH": True,
    "DEDUP_TTL": 300,
    "CACHE": "default",
    "REDIS_URL": None,
    "MAX_RETRIES": 8,
    "RETRY_BACKOFF_MAX": 600,
    "RETRY_AFTER_MAX": 60,
    "TIMEOUT": 10,
    "ENABLED": True,
    "RELAY": True,  # every Celery worker relays the Outbox (off: run cio_relay --loop yourself)
    # Requests (middleware) and logins (auth signals)
    "PAGE_VIEWS": False,
    "PAGE_VIEWS_SKIP": r"^/(static|media|admin|health|favicon\.ico)",
    "ANONYMOUS_COOKIE": "cio_anonymous_id",
    "AUTH_SIGNALS": True,
    "TRACK_IP": False,
}

_NUMBERS = ("DEDUP_TTL", "MAX_RETRIES", "RETRY_BACKOFF_MAX", "RETRY_AFTER_MAX", "TIMEOUT")
_FLAGS = ("BATCH", "ENABLED", "RELAY", "PAGE_VIEWS", "AUTH_SIGNALS", "TRACK_IP")
_NAMES = ("QUEUE", "CACHE", "BACKEND", "REGION", "ANONYMOUS_COOKIE")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*$")


class Problem(NamedTuple):
    """A configuration problem: the system check id (``"E001"``...) and its message."""

    id: str
    message: str


@dataclass(frozen=True)
class Rate:
    """``requests`` allowed every ``period`` seconds."""

    requests: float
    period: float

    @property
    def per_second(self) -> float:
        return self.requests / self.period


def parse_rate(value: str) -> Rate:
    """Parse ``"80/s"``, ``"4800/m"``, ``"10/5s"`` into a ``Rate``."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0 or match[2] == "0":
        raise ConfigurationError(
            f"CUSTOMERIO['RATE_LIMIT'] must look like '80/s', '4800/m' or '10/5s', got {value!r}"
        )
    count, multiple, unit = match.groups()
    return Rate(float(count), _PERIODS[unit] * int(multiple or 1))


@dataclass(frozen=True)
class CIOSettings:
    """``settings.CUSTOMERIO`` merged over the defaults. Keys become lowercase attributes."""

    site_id: str | None
    api_key: str | None = field(repr=False)
    region: str
    track_url: str | None
    backend: str
    rate_limit: str
    rate_limit_workers: int
    queue: str
    batch: bool
    dedup_ttl: float
    cache: str
    redis_url: str | None = field(repr=False)  # may hold a password
    max_retries: int
    retry_backoff_max: float
    retry_after_max: float
    timeout: float
    enabled: bool
    relay: bool
    page_views: bool
    page_views_skip: str
    anonymous_cookie: str
    auth_signals: bool
    track_ip: bool

    @property
    def base_url(self) -> str:
        """Where the Track API lives: ``TRACK_URL`` if set, else the region's host."""
        return self.track_url.rstrip("/") if self.track_url else REGION_URLS[self.region]

    @property
    def rate(self) -> Rate:
        return parse_rate(self.rate_limit)


def is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def merged_settings() -> dict[str, Any]:
    """``settings.CUSTOMERIO`` over ``DEFAULTS``, unchecked (a non-dict counts as empty)."""
    user = getattr(settings, "CUSTOMERIO", {})
    return {**DEFAULTS, **user} if isinstance(user, dict) else dict(DEFAULTS)


def find_problems() -> list[Problem]:
    """Every problem with the shape of ``settings.CUSTOMERIO``, not only the first."""
    user = getattr(settings, "CUSTOMERIO", {})
    if not isinstance(user, dict):
        return [Problem("E001", "settings.CUSTOMERIO must be a dict")]
    problems = []
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        problems.append(Problem("E001", f"Unknown key(s) in settings.CUSTOMERIO: "
                                        f"{', '.join(unknown)}. Known keys: {', '.join(DEFAULTS)}"))
    merged = {**DEFAULTS, **user}
    for key in _NUMBERS:
        value, least = merged[key], 0 if key != "TIMEOUT" else 0.001
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= least
        ):
            above = "above 0" if key == "TIMEOUT" else ">= 0"
            problems.append(Problem("E001", f"CUSTOMERIO['{key}'] must be a number {above}, "
                                            f"got {value!r}"))
    workers = merged["RATE_LIMIT_WORKERS"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        problems.append(Problem("E001", f"CUSTOMERIO['RATE_LIMIT_WORKERS'] must be an integer "
                                        f">= 1, got {workers!r}"))
    for key in _FLAGS:
        if not isinstance(merged[key], bool):
            problems.append(Problem("E001", f"CUSTOMERIO['{key}'] must be True or False, "
                                            f"got {merged[key]!r}"))
    for key in _NAMES:
        if not isinstance(merged[key], str) or not merged[key]:
            problems.append(Problem("E001", f"CUSTOMERIO['{key}'] must be a non-empty string"))
    if isinstance(merged["REGION"], str) and merged["REGION"] not in REGION_URLS:
        problems.append(Problem("E003", f"CUSTOMERIO['REGION'] must be one of "
                                        f"{sorted(REGION_URLS)}, got {merged['REGION']!r}"))
    try:
        parse_rate(merged["RATE_LIMIT"])
    except ConfigurationError as exc:
        problems.append(Problem("E004", str(exc)))
    try:
        re.compile(merged["PAGE_VIEWS_SKIP"])
    except (re.error, TypeError):
        problems.append(Problem("E001", "CUSTOMERIO['PAGE_VIEWS_SKIP'] must be a regular "
                                        "expression matched against request paths"))
    redis_url = merged["REDIS_URL"]
    if redis_url is not None and not (
        isinstance(redis_url, str) and urlsplit(redis_url).scheme in ("redis", "rediss", "unix")
    ):
        problems.append(Problem("E001", "CUSTOMERIO['REDIS_URL'] must be a redis://, rediss:// "
                                        "or unix:// URL (or None)"))
    if merged["TRACK_URL"] is not None and not is_http_url(merged["TRACK_URL"]):
        problems.append(Problem("E005", "CUSTOMERIO['TRACK_URL'] must be an http:// or "
                                        "https:// URL"))
    return problems


@functools.cache
def get_settings() -> CIOSettings:
    """The current django-cio settings (cached; cleared when ``CUSTOMERIO`` changes).

    Raises ``ConfigurationError`` listing every problem ``manage.py check`` would report.
    """
    problems = find_problems()
    if problems:
        raise ConfigurationError("; ".join(problem.message for problem in problems))
    return CIOSettings(**{key.lower(): value for key, value in merged_settings().items()})


def clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CUSTOMERIO", "CACHES"):
        get_settings.cache_clear()
