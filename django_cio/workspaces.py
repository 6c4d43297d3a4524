"""The public verbs, for the workspace routing picks (``django_cio.identify(...)``) or for one
named in the call, in the spirit of Django's ``using()``::

    django_cio.workspace("eu").track(user.pk, "order_placed", total=order.total)

Each call validates at once (a ``ValidationError`` names the bad field) and queues the op to
be sent after the current transaction commits, grouped with the transaction's other ops.
"""

from __future__ import annotations

from typing import Any

from .conf import get_settings
from .exceptions import ValidationError
from .operations import (
    AddDevice,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    Event,
    Identify,
    Merge,
    Move,
    Page,
    Suppress,
    Unsuppress,
)
from .producer import enqueue


class Workspace:
    """The verbs for one workspace, or (``name=None``) for whichever routing picks."""

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            get_settings(name)  # an unknown name fails here, not in a worker
        self.name = name

    def __repr__(self) -> str:
        return f"<Workspace {self.name or '(routed)'}>"

    def identify(self, person_id: str | int, /, **attributes: Any) -> None:
        """Create or update a person with these attributes."""
        enqueue(Identify(person_id, attributes, workspace=self.name))  # type: ignore[arg-type]

    def track(self, person_id: str | int, name: str, /, **data: Any) -> None:
        """Record an event for a person; it gets its id and timestamp now."""
        enqueue(Event(person_id, name, data, workspace=self.name))  # type: ignore[arg-type]

    def track_anonymous(self, anonymous_id: str, name: str, /, **data: Any) -> None:
        """Record an event for a visitor not identified yet."""
        enqueue(AnonymousEvent(anonymous_id, name, data, workspace=self.name))

    def page(self, person_id: str | int, url: str, /, **data: Any) -> None:
        """Record a page view."""
        enqueue(Page(person_id, url, data, workspace=self.name))  # type: ignore[arg-type]

    def delete(self, person_id: str | int) -> None:
        """Delete a person and their data from Customer.io."""
        enqueue(Delete(person_id, workspace=self.name))  # type: ignore[arg-type]

    def suppress(self, person_id: str | int) -> None:
        """Delete a person and keep them from being added again."""
        enqueue(Suppress(person_id, workspace=self.name))  # type: ignore[arg-type]

    def unsuppress(self, person_id: str | int) -> None:
        """Allow a suppressed person to be added again."""
        enqueue(Unsuppress(person_id, workspace=self.name))  # type: ignore[arg-type]

    def add_device(self, person_id: str | int, token: str, platform: str, /,
                   **attributes: Any) -> None:
        """Add or update a push device (``platform`` is ``"ios"`` or ``"android"``)."""
        enqueue(AddDevice(person_id, token, platform,  # type: ignore[arg-type]
                          attributes=attributes, workspace=self.name))

    def delete_device(self, person_id: str | int, token: str) -> None:
        """Remove a push device."""
        enqueue(DeleteDevice(person_id, token, workspace=self.name))  # type: ignore[arg-type]

    def merge(self, primary: str | int, secondary: str | int) -> None:
        """Merge ``secondary`` into ``primary``; ``secondary`` is deleted."""
        enqueue(Merge(primary, secondary, workspace=self.name))  # type: ignore[arg-type]


def workspace(name: str) -> Workspace:
    """The verbs for workspace ``name`` (``"default"`` or a key of ``WORKSPACES``); raises
    ``ConfigurationError`` for a name the settings do not have."""
    return Workspace(name)


def move(person_id: str | int, old: str, new: str, /, **attributes: Any) -> None:
    """Move a person from workspace ``old`` to ``new`` (their data region changed): deleted in
    ``old`` and, once Customer.io has taken the delete, identified in ``new`` with these
    attributes (for a registered model, ``registry.attributes_for(instance)``)."""
    if old == new:
        raise ValidationError("move", "to", "is the workspace the person is in")
    get_settings(new)  # an unknown name fails here
    enqueue(Move(person_id, to=new, attributes=attributes,  # type: ignore[arg-type]
                 workspace=old))
