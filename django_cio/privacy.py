"""Personal data stays out of logs, errors and pages: person ids stand in as keyed hashes,
keys that might be data as ``<key>``, stored ops as their shape, exceptions as a reason that
holds no value, and Track API paths in urllib3's debug log as ``<id>``."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings

from .exceptions import ConfigurationError, ValidationError

_PLAIN_KEY = re.compile(r"[\w \-]{1,40}")  # fullmatch: "$" would let a final newline in


def person_hash(person_id: str) -> str:
    """A short, stable stand-in for a person id in logs (ids may be emails).

    Keyed with ``SECRET_KEY`` so that hashing a list of known emails doesn't reverse it.
    """
    key = str(getattr(settings, "SECRET_KEY", "")).encode() if settings.configured else b""
    return hmac.new(key, person_id.encode(errors="replace"), hashlib.sha256).hexdigest()[:12]


_showing_ids = contextvars.ContextVar("django_cio_showing_ids", default=False)


@contextlib.contextmanager
def showing_ids() -> Iterator[None]:
    """Ops' reprs show real person ids inside this block: where only the developer sees them
    (a test's ``cio_outbox``, a dry run printed to their terminal)."""
    token = _showing_ids.set(True)
    try:
        yield
    finally:
        _showing_ids.reset(token)


def shown_id(person_id: str) -> str:
    """A person id as an op's repr shows it: the id itself with ``DEBUG`` on or inside
    ``showing_ids()``, else its hash. Logs and stored reasons always use ``person_hash``."""
    debug = settings.configured and settings.DEBUG
    return person_id if debug or _showing_ids.get() else person_hash(person_id)


def safe_label(key: str) -> str:
    """A key for an error message, unless it might be data (an email used as a key, say)."""
    return key if _PLAIN_KEY.fullmatch(key) else "<key>"


def redacted(value: Any) -> Any:
    """The shape of a stored op: its keys and the type of each value, never the values
    (attribute values are PII). Replay uses the op as it is stored."""
    if isinstance(value, dict):
        return {safe_label(str(key)): redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    return type(value).__name__


def safe_reason(exc: BaseException) -> str:
    """What may be logged or stored of an exception from user code or input: the message of
    a ``ValidationError`` (it names the op and field, never the value) or of a
    ``ConfigurationError`` (it names settings and registrations), the name a missing attribute
    had, else the type alone (other messages may quote values)."""
    if isinstance(exc, (ValidationError, ConfigurationError)):
        return str(exc)
    if isinstance(exc, AttributeError) and exc.name:
        return f"AttributeError: no attribute {exc.name!r}"
    return type(exc).__name__


class HidePersonPaths(logging.Filter):
    """urllib3 logs each request's path at DEBUG, and a v1 path holds the person id (an email,
    maybe) and a device token: those of Track API paths are logged as ``<id>``, ``<token>``,
    wherever the path sits (behind a proxy prefix, in an absolute URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(hide_person_paths(arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


_PERSON_PATH = re.compile(r"(/api/v1/customers/)[^/?#\s\"]+(?:(/devices/)[^/?#\s\"]+)?")


def hide_person_paths(text: str) -> str:
    return _PERSON_PATH.sub(lambda m: m[1] + "<id>" + (m[2] + "<token>" if m[2] else ""), text)


# Installed on urllib3's logger by ``AppConfig.ready``.
HIDE_PERSON_PATHS = HidePersonPaths()
