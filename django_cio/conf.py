"""The one place that reads ``settings.CUSTOMERIO``.

``get_settings()`` merges the user's dict over ``DEFAULTS`` and returns a frozen
``CIOSettings``. It is read lazily and cached until Django's ``setting_changed`` fires, so
``override_settings(CUSTOMERIO=...)`` works in tests. Bad values raise ``ConfigurationError``
naming the key; ``checks.py`` turns the same errors into system-check messages.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from django.conf import settings

from .exceptions import ConfigurationError

REGION_URLS = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}
# The App API (transactional messages): the account's region, another host.
APP_REGION_URLS = {
    "us": "https://api.customer.io",
    "eu": "https://api-eu.customer.io",
}

HTTP_BACKEND = "django_cio.backends.http.TrackAPIBackend"

Check = Callable[[Any], "str | None"]  # what is wrong with a value ("must be ..."), or None


@dataclass(frozen=True)
class Option:
    """One key of ``CUSTOMERIO``: its default, what a good value is, and the id of the system
    check that reports a bad one."""

    default: Any
    check: Check | None = None
    id: str = ""
    shows_value: bool = True  # False where a value may hold a password (URLs)


def _number(least: float = 0, above: bool = False) -> Check:
    def check(value: Any) -> str | None:
        good = (not isinstance(value, bool) and isinstance(value, (int, float))
                and math.isfinite(value) and (value > least if above else value >= least))
        return None if good else f"must be a number {'above' if above else '>='} {least:g}"
    return check


def _integer(least: int) -> Check:
    def check(value: Any) -> str | None:
        good = not isinstance(value, bool) and isinstance(value, int) and value >= least
        return None if good else f"must be an integer >= {least}"
    return check


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _name(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _region(value: Any) -> str | None:
    return None if value in REGION_URLS else f"must be one of {sorted(REGION_URLS)}"


def _track_url(value: Any) -> str | None:
    return None if value is None or is_http_url(value) else "must be an http:// or https:// URL"


def _redis_url(value: Any) -> str | None:
    good = value is None or (isinstance(value, str)
                             and urlsplit(value).scheme in ("redis", "rediss", "unix"))
    return None if good else "must be a redis://, rediss:// or unix:// URL (or None)"


def _rate(value: Any) -> str | None:
    try:
        parse_rate(value)
    except ConfigurationError:
        return "must look like '80/s', '4800/m' or '10/5s', with a count above 0"
    return None


def _dotted_path(value: Any) -> str | None:
    good = value is None or (isinstance(value, str) and re.fullmatch(_DOTTED, value) is not None)
    return None if good else "must be a dotted path to a callable, like 'myproject.routing.route'"


def _workspaces(value: Any) -> str | None:
    # Only the outer shape: each workspace's own keys are checked by _workspace_problems.
    return None if isinstance(value, dict) else "must be a dict of workspace name to settings"


def _pattern(value: Any) -> str | None:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return "must be a regular expression matched against request paths"
    return None


# Every key of CUSTOMERIO, once: the defaults, ``CIOSettings``'s fields, validation and the
# system checks (one id per key) all come from here; docs/settings.md lists them.
OPTIONS: dict[str, Option] = {
    "SITE_ID": Option(None),
    "API_KEY": Option(None),
    "REGION": Option("us", _region, "E003"),
    "TRACK_URL": Option(None, _track_url, "E005", shows_value=False),
    "BACKEND": Option(HTTP_BACKEND, _name, "E010"),
    "RATE_LIMIT": Option("80/s", _rate, "E004"),
    "RATE_LIMIT_WORKERS": Option(4, _integer(1), "E011"),
    "QUEUE": Option("customerio", _name, "E012"),
    "BATCH": Option(True, _flag, "E013"),
    "DEDUP_TTL": Option(300, _number(), "E014"),
    "CACHE": Option("default", _name, "E015"),
    "REDIS_URL": Option(None, _redis_url, "E016", shows_value=False),
    "MAX_RETRIES": Option(8, _integer(0), "E017"),
    "RETRY_BACKOFF_MAX": Option(600, _number(), "E018"),
    "RETRY_AFTER_MAX": Option(60, _number(), "E019"),
    "TIMEOUT": Option(10, _number(above=True), "E020"),
    "ENABLED": Option(True, _flag, "E021"),
    # Every Celery worker relays the Outbox (off: run cio_relay --loop yourself).
    "RELAY": Option(True, _flag, "E022"),
    # Requests (middleware) and logins (auth signals)
    "PAGE_VIEWS": Option(False, _flag, "E023"),
    "PAGE_VIEWS_SKIP": Option(r"^/(static|media|admin|health|favicon\.ico)", _pattern, "E024"),
    "ANONYMOUS_COOKIE": Option("cio_anonymous_id", _name, "E025"),
    "AUTH_SIGNALS": Option(True, _flag, "E026"),
    "TRACK_IP": Option(False, _flag, "E027"),
    # More workspaces than the default one (the flat keys above), and who picks among them.
    "WORKSPACES": Option({}, _workspaces, "E028", shows_value=False),
    "ROUTER": Option(None, _dotted_path, "E029"),
    # Transactional messages go to the App API: its own key, host and limit (for sends).
    "APP_API_KEY": Option(None),
    "APP_URL": Option(None, _track_url, "E030", shows_value=False),
    "APP_RATE_LIMIT": Option("100/s", _rate, "E031"),
}
# The default workspace: the flat keys. Named workspaces are CUSTOMERIO["WORKSPACES"].
DEFAULT_WORKSPACE = "default"
# What a named workspace may set. Its account (credentials, region, URL) is its own, never the
# default workspace's: EU data must not follow a US TRACK_URL. QUEUE defaults to
# "<QUEUE>.<name>"; the rest default to the flat keys.
WORKSPACE_KEYS = ("SITE_ID", "API_KEY", "REGION", "TRACK_URL", "RATE_LIMIT",
                  "RATE_LIMIT_WORKERS", "QUEUE", "BATCH", "TIMEOUT", "APP_API_KEY", "APP_URL",
                  "APP_RATE_LIMIT")
_OWN = {"site_id": None, "api_key": None, "region": OPTIONS["REGION"].default, "track_url": None,
        "app_api_key": None, "app_url": None}
WORKSPACE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_DOTTED = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")
DEFAULTS: dict[str, Any] = {key: option.default for key, option in OPTIONS.items()}
NOT_A_DICT, UNKNOWN_KEYS, WORKSPACE_ID = "E001", "E009", "E028"

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
    workspaces: dict[str, dict[str, Any]] = field(repr=False, compare=False)  # hold API keys
    router: str | None
    app_api_key: str | None = field(repr=False)
    app_url: str | None
    app_rate_limit: str
    workspace: str = DEFAULT_WORKSPACE  # the one these settings are for

    @property
    def base_url(self) -> str:
        """Where the Track API lives: ``TRACK_URL`` if set, else the region's host."""
        return self.track_url.rstrip("/") if self.track_url else REGION_URLS[self.region]

    @property
    def app_base_url(self) -> str:
        """Where the App API lives: ``APP_URL`` if set, else the region's host."""
        return self.app_url.rstrip("/") if self.app_url else APP_REGION_URLS[self.region]

    @property
    def rate(self) -> Rate:
        return parse_rate(self.rate_limit)

    @property
    def app_rate(self) -> Rate:
        return parse_rate(self.app_rate_limit)

    @property
    def workspace_names(self) -> tuple[str, ...]:
        """Every workspace, the default one first."""
        return (DEFAULT_WORKSPACE, *self.workspaces)


def is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def no_app_key(config: CIOSettings) -> ConfigurationError:
    """The error for sending a transactional message through a workspace without the key."""
    where = ("CUSTOMERIO" if config.workspace == DEFAULT_WORKSPACE else
             f"CUSTOMERIO['WORKSPACES'][{config.workspace!r}]")
    return ConfigurationError(f"{where}['APP_API_KEY'] is required to send transactional "
                              "messages (the App API's key, not API_KEY)")


def merged_settings() -> dict[str, Any]:
    """``settings.CUSTOMERIO`` over ``DEFAULTS``, unchecked (a non-dict counts as empty)."""
    user = getattr(settings, "CUSTOMERIO", {})
    return {**DEFAULTS, **user} if isinstance(user, dict) else dict(DEFAULTS)


def find_problems() -> list[Problem]:
    """Every problem with the shape of ``settings.CUSTOMERIO``, not only the first."""
    user = getattr(settings, "CUSTOMERIO", {})
    if not isinstance(user, dict):
        return [Problem(NOT_A_DICT, "settings.CUSTOMERIO must be a dict")]
    problems = []
    unknown = sorted(set(user) - set(OPTIONS))
    if unknown:
        problems.append(Problem(UNKNOWN_KEYS, f"Unknown key(s) in settings.CUSTOMERIO: "
                                              f"{', '.join(unknown)}. Known keys: "
                                              f"{', '.join(OPTIONS)}"))
    problems += _value_problems(user, OPTIONS, "CUSTOMERIO")
    if isinstance(user.get("WORKSPACES"), dict):
        problems += _workspace_problems(user)
    return problems


def _value_problems(values: dict[str, Any], keys: Any, where: str) -> list[Problem]:
    problems = []
    for key in keys:
        option = OPTIONS[key]
        value = values.get(key, option.default)
        wrong = option.check(value) if option.check else None
        if wrong:  # the credentials have no check: they never get here
            got = f", got {value!r}" if option.shows_value else ""
            problems.append(Problem(option.id, f"{where}['{key}'] {wrong}{got}"))
    return problems


def _workspace_problems(user: dict[str, Any]) -> list[Problem]:
    """What is wrong with each named workspace, named by it."""
    problems = []
    queues = {user.get("QUEUE", OPTIONS["QUEUE"].default): DEFAULT_WORKSPACE}
    for name, values in user["WORKSPACES"].items():
        where = f"CUSTOMERIO['WORKSPACES'][{name!r}]"
        if name == DEFAULT_WORKSPACE or not (isinstance(name, str)
                                             and WORKSPACE_NAME.fullmatch(name)):
            problems.append(Problem(WORKSPACE_ID, f"{where}: a workspace name must be lowercase "
                                    "letters, digits, '-' or '_' (at most 40), and not "
                                    f"{DEFAULT_WORKSPACE!r} (the flat keys are that one)"))
            continue
        if not isinstance(values, dict):
            problems.append(Problem(WORKSPACE_ID, f"{where} must be a dict of settings"))
            continue
        unknown = sorted(set(values) - set(WORKSPACE_KEYS))
        if unknown:
            problems.append(Problem(WORKSPACE_ID, f"{where}: unknown key(s) {', '.join(unknown)}"
                                    f". A workspace may set {', '.join(WORKSPACE_KEYS)}"))
        problems += _value_problems(values, [key for key in WORKSPACE_KEYS if key in values],
                                    where)
        queue = values.get("QUEUE", _default_queue(user, name))
        if queue in queues:  # one queue's backlog would hold up the other workspace
            problems.append(Problem(WORKSPACE_ID, f"{where}['QUEUE'] is also the queue of "
                                    f"workspace {queues[queue]!r}: each needs its own"))
        queues[queue] = name
    return problems


def _default_queue(user: dict[str, Any], name: str) -> str:
    return f"{user.get('QUEUE', OPTIONS['QUEUE'].default)}.{name}"


@functools.cache
def get_settings(workspace: str = DEFAULT_WORKSPACE) -> CIOSettings:
    """The current django-cio settings of a workspace (cached; cleared when ``CUSTOMERIO``
    changes). A named workspace's settings are the flat ones with its own keys over them.

    Raises ``ConfigurationError`` listing every problem ``manage.py check`` would report, or
    naming an unknown workspace.
    """
    if workspace != DEFAULT_WORKSPACE:
        config = get_settings()
        if workspace not in config.workspaces:
            raise ConfigurationError(
                f"Unknown Customer.io workspace {workspace!r}: the settings have "
                f"{', '.join(map(repr, config.workspace_names))} (CUSTOMERIO['WORKSPACES'])")
        own: dict[str, Any] = {**_OWN, "queue": _default_queue(merged_settings(), workspace)}
        own.update((key.lower(), value) for key, value in config.workspaces[workspace].items())
        return dataclasses.replace(config, workspace=workspace, **own)
    problems = find_problems()
    if problems:
        raise ConfigurationError("; ".join(problem.message for problem in problems))
    return CIOSettings(**{key.lower(): value for key, value in merged_settings().items()})


def clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CUSTOMERIO", "CACHES"):
        get_settings.cache_clear()
