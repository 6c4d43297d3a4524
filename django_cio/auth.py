"""Logins and logouts as Customer.io ops (``AUTH_SIGNALS``, on by default).

At login the person is identified (with their registered attributes; dedup drops it when
nothing changed) and a ``login`` event is tracked; ``logout`` likewise. If the visitor had an
anonymous id (the middleware's cookie), the identify carries it as ``anonymous_id``: that is
how Customer.io's Track API merges earlier anonymous events into the person, and it keeps the
anonymous history without a separate merge call (merge is for two identified people). IP and
user agent are sent only with ``TRACK_IP``: privacy by default.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest

from .conf import get_settings
from .operations import Event, Identify
from .privacy import safe_reason
from .producer import enqueue
from .registry import attributes_for, person_id_for, registry, workspace_for

logger = logging.getLogger("django_cio")


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if _tracked(user):
        with _never_failing("login"):
            person = person_id_for(user)
            attributes = attributes_for(user)
            tracker = getattr(request, "cio", None)
            if tracker is not None and tracker.known_anonymous_id:
                attributes["anonymous_id"] = tracker.known_anonymous_id
                tracker.forget_anonymous_id = True
            workspace = workspace_for(user)
            enqueue(Identify(person, attributes, workspace=workspace))  # type: ignore[arg-type]
            enqueue(Event(person, "login", _client(request), workspace=workspace))  # type: ignore[arg-type]


def on_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if _tracked(user):
        with _never_failing("logout"):
            enqueue(Event(person_id_for(user), "logout", _client(request),  # type: ignore[arg-type]
                          workspace=workspace_for(user)))


def _tracked(user: Any) -> bool:
    """Auth signals on, a user, and one their registration does not exclude."""
    if not get_settings().auth_signals or user is None:
        return False
    customer = registry.customer_for(user.__class__)
    return customer is None or customer.should_track(user)


@contextlib.contextmanager
def _never_failing(what: str) -> Iterator[None]:
    """A login must not fail because of Customer.io: log (no values) and carry on."""
    try:
        yield
    except Exception as exc:
        logger.error("customerio: %s not sent (%s)", what, safe_reason(exc))


def _client(request: HttpRequest | None) -> dict[str, str]:
    if request is None or not get_settings().track_ip:
        return {}
    return {"ip": request.META.get("REMOTE_ADDR", ""),
            "user_agent": request.META.get("HTTP_USER_AGENT", "")[:1000]}
