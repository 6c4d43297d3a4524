"""Errors raised by django-cio.

Configuration problems are ``ImproperlyConfigured`` (found at start-up or by system checks);
everything that can happen at run time descends from ``CustomerIOError``. No message here ever
carries the API key, a request body or an attribute value: only op kinds, field names, counts
and HTTP status codes.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class ConfigurationError(ImproperlyConfigured):
    """The ``CUSTOMERIO`` setting is missing, malformed or inconsistent."""


class CustomerIOError(Exception):
    """Base class of every run-time error raised by django-cio."""


class ValidationError(CustomerIOError, ValueError):
    """An operation breaks a Track API rule; raised when the operation is built.

    ``kind`` is the op kind (``"identify"``, ``"event"``, ...), ``field`` names what is wrong
    (``"person_id"``, ``"attributes.email"``, ``"data"``) and ``limit`` the rule it breaks.
    """

    def __init__(self, kind: str, field: str, problem: str, limit: str = "") -> None:
        self.kind, self.field, self.limit = kind, field, limit
        super().__init__(f"{kind}: {field} {problem}")


class APIError(CustomerIOError):
    """The Track API did not accept a request.

    Carries the HTTP ``status`` (``None`` for network errors), the op ``kind`` and how many
    ops the request held (``count``); never the URL, the body or the credentials.
    """

    def __init__(self, reason: str, *, status: int | None, kind: str, count: int = 1,
                 maybe_sent: bool = False) -> None:
        self.reason, self.status, self.kind, self.count = reason, status, kind, count
        # Whether the request may have been taken all the same (it left, and no answer says
        # it was not): harmless to resend for Track ops, never for a transactional message.
        self.maybe_sent = maybe_sent
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{reason} ({where}; {count} {kind} op{'s' if count != 1 else ''})")


class TransientError(APIError):
    """Worth retrying: timeouts, connection errors, 408 and 5xx answers."""


class RateLimited(TransientError):
    """HTTP 429. ``retry_after`` is the server's wait in seconds, or ``None`` if it gave none."""

    def __init__(self, *, retry_after: float | None, kind: str, count: int = 1) -> None:
        self.retry_after = retry_after
        super().__init__("rate limited", status=429, kind=kind, count=count)


class Throttled(CustomerIOError):
    """The shared rate limit's next slot is more than ``max_wait`` away; nothing was reserved
    (the ops wait on the broker, not in a worker)."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"rate limited for {wait:.1f} s")


class LimiterUnavailable(Throttled):
    """The limiter's Redis cannot be reached: no slot can be had for ``wait`` seconds."""


class PermanentError(APIError):
    """The request will fail again as it is: 400, 401, 403, 404, 413 and other 4xx answers."""
