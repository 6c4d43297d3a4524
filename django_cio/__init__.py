"""django-cio: a Django project's people and events in Customer.io, reliably and fast.

Each call validates at once (a ``ValidationError`` names the bad field) and queues the op to be
sent after the current transaction commits, grouped with the transaction's other ops::

    import django_cio

    django_cio.identify(user.pk, email=user.email, plan="pro")
    django_cio.track(user.pk, "order_placed", total=order.total)
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .backends.locmem import outbox
from .operations import (
    AddDevice,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    Event,
    Identify,
    Merge,
    Page,
    Suppress,
    Unsuppress,
)
from .producer import batch, enqueue
from .registry import Customer, identify_many, register, register_event


def identify(person_id: str | int, /, **attributes: Any) -> None:
    """Create or update a person with these attributes."""
    enqueue(Identify(person_id, attributes))  # type: ignore[arg-type]


def track(person_id: str | int, name: str, /, **data: Any) -> None:
    """Record an event for a person; it gets its id and timestamp now."""
    enqueue(Event(person_id, name, data))  # type: ignore[arg-type]


def track_anonymous(anonymous_id: str, name: str, /, **data: Any) -> None:
    """Record an event for a visitor not identified yet."""
    enqueue(AnonymousEvent(anonymous_id, name, data))


def page(person_id: str | int, url: str, /, **data: Any) -> None:
    """Record a page view."""
    enqueue(Page(person_id, url, data))  # type: ignore[arg-type]


def delete(person_id: str | int) -> None:
    """Delete a person and their data from Customer.io."""
    enqueue(Delete(person_id))  # type: ignore[arg-type]


def suppress(person_id: str | int) -> None:
    """Delete a person and keep them from being added again."""
    enqueue(Suppress(person_id))  # type: ignore[arg-type]


def unsuppress(person_id: str | int) -> None:
    """Allow a suppressed person to be added again."""
    enqueue(Unsuppress(person_id))  # type: ignore[arg-type]


def add_device(person_id: str | int, token: str, platform: str, /,
               **attributes: Any) -> None:
    """Add or update a push device (``platform`` is ``"ios"`` or ``"android"``)."""
    enqueue(AddDevice(person_id, token, platform, attributes=attributes))  # type: ignore[arg-type]


def delete_device(person_id: str | int, token: str) -> None:
    """Remove a push device."""
    enqueue(DeleteDevice(person_id, token))  # type: ignore[arg-type]


def merge(primary: str | int, secondary: str | int) -> None:
    """Merge ``secondary`` into ``primary``; ``secondary`` is deleted."""
    enqueue(Merge(primary, secondary))  # type: ignore[arg-type]


__all__ = [
    "Customer", "__version__", "add_device", "batch", "delete", "delete_device", "identify",
    "identify_many", "merge", "outbox", "page", "register", "register_event", "suppress",
    "track", "track_anonymous", "unsuppress",
]
