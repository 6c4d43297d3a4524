"""The public verbs, for the workspace routing picks (``django_cio.identify(...)``) or for one
named in the call, in the spirit of Django's ``using()``::

    django_cio.workspace("eu").track(user.pk, "order_placed", total=order.total)

A person is a plain id or a ``Person`` naming them by email or cio_id, and ``at(when)`` backdates
what it sends (an import of past orders), in a call of its own so that no name is taken from
the attributes and event data that the keyword arguments carry::

    django_cio.track(Person(email=row.email), "order_placed", total=row.total)
    django_cio.at(order.created).track(order.user_id, "order_placed", total=order.total)

Each call validates at once (a ``ValidationError`` names the bad field) and queues the op to
be sent after the current transaction commits, grouped with the transaction's other ops.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from typing import Any

from .backends import backend_class
from .conf import DEFAULT_WORKSPACE, get_settings, no_app_key
from .exceptions import ValidationError
from .operations import (
    AddDevice,
    AddRelationship,
    AddToSegment,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    DeleteObject,
    DeleteRelationship,
    Event,
    Identify,
    IdentifyObject,
    Merge,
    Move,
    Page,
    Person,
    RemoveFromSegment,
    Screen,
    SendEmail,
    SendMessage,
    SendPush,
    SendSms,
    Suppress,
    Unsuppress,
)
from .operations.limits import MAX_SEGMENT_PEOPLE
from .operations.values import check_timestamp
from .producer import enqueue
from .routing import route

PersonRef = str | int | Person


class Workspace:
    """The verbs for one workspace, or (``name=None``) for whichever routing picks; with a
    ``timestamp`` (see ``at``), identifies and events carry that time instead of now."""

    def __init__(self, name: str | None = None, timestamp: int | None = None) -> None:
        if name is not None:
            get_settings(name)  # an unknown name fails here, not in a worker
        self.name = name
        self.timestamp = timestamp

    def __repr__(self) -> str:
        at = f" at {self.timestamp}" if self.timestamp is not None else ""
        return f"<Workspace {self.name or '(routed)'}{at}>"

    def at(self, when: datetime | date | int) -> Workspace:
        """These verbs, backdated: identifies and events sent with the time ``when`` (a
        datetime, or Unix seconds), e.g. when importing history."""
        return Workspace(self.name, check_timestamp("at", "when", when))

    def _time(self) -> dict[str, Any]:
        return {} if self.timestamp is None else {"timestamp": self.timestamp}

    def identify(self, person_id: PersonRef, /, **attributes: Any) -> None:
        """Create or update a person with these attributes."""
        enqueue(Identify(person_id, attributes,  # type: ignore[arg-type]
                         workspace=self.name, **self._time()))

    def track(self, person_id: PersonRef, name: str, /, **data: Any) -> None:
        """Record an event for a person; it gets its id now, and its time (now, or ``at``)."""
        enqueue(Event(person_id, name, data,  # type: ignore[arg-type]
                      workspace=self.name, **self._time()))

    def track_anonymous(self, anonymous_id: str, name: str, /, **data: Any) -> None:
        """Record an event for a visitor not identified yet."""
        enqueue(AnonymousEvent(anonymous_id, name, data, workspace=self.name, **self._time()))

    def page(self, person_id: PersonRef, url: str, /, **data: Any) -> None:
        """Record a page view."""
        enqueue(Page(person_id, url, data,  # type: ignore[arg-type]
                     workspace=self.name, **self._time()))

    def page_anonymous(self, anonymous_id: str, url: str, /, **data: Any) -> None:
        """Record a page view by a visitor not identified yet."""
        enqueue(AnonymousEvent(anonymous_id, url, data, type="page", workspace=self.name,
                               **self._time()))

    def screen(self, person_id: PersonRef, name: str, /, **data: Any) -> None:
        """Record a mobile app screen view."""
        enqueue(Screen(person_id, name, data,  # type: ignore[arg-type]
                       workspace=self.name, **self._time()))

    def screen_anonymous(self, anonymous_id: str, name: str, /, **data: Any) -> None:
        """Record a screen view by a visitor not identified yet."""
        enqueue(AnonymousEvent(anonymous_id, name, data, type="screen", workspace=self.name,
                               **self._time()))

    def delete(self, person_id: PersonRef) -> None:
        """Delete a person and their data from Customer.io."""
        enqueue(Delete(person_id, workspace=self.name))  # type: ignore[arg-type]

    def suppress(self, person_id: PersonRef) -> None:
        """Delete a person and keep them from being added again."""
        enqueue(Suppress(person_id, workspace=self.name))  # type: ignore[arg-type]

    def unsuppress(self, person_id: PersonRef) -> None:
        """Allow a suppressed person to be added again."""
        enqueue(Unsuppress(person_id, workspace=self.name))  # type: ignore[arg-type]

    def add_device(self, person_id: PersonRef, token: str, platform: str, /,
                   **attributes: Any) -> None:
        """Add or update a push device (``platform`` is ``"ios"`` or ``"android"``)."""
        enqueue(AddDevice(person_id, token, platform,  # type: ignore[arg-type]
                          attributes=attributes, workspace=self.name))

    def delete_device(self, person_id: PersonRef, token: str) -> None:
        """Remove a push device."""
        enqueue(DeleteDevice(person_id, token, workspace=self.name))  # type: ignore[arg-type]

    def merge(self, primary: PersonRef, secondary: PersonRef) -> None:
        """Merge ``secondary`` into ``primary``; ``secondary`` is deleted."""
        enqueue(Merge(primary, secondary, workspace=self.name))  # type: ignore[arg-type]

    def identify_object(self, object_type_id: int | str, object_id: str | int, /,
                        **attributes: Any) -> None:
        """Create or update an object (a company, an account) of this type with these
        attributes."""
        enqueue(IdentifyObject(object_type_id, object_id, attributes,  # type: ignore[arg-type]
                               workspace=self.name))

    def delete_object(self, object_type_id: int | str, object_id: str | int) -> None:
        """Delete an object, and its relationships."""
        enqueue(DeleteObject(object_type_id, object_id,  # type: ignore[arg-type]
                             workspace=self.name))

    def add_relationship(self, person_id: PersonRef, object_type_id: int | str,
                         object_id: str | int, /, **attributes: Any) -> None:
        """Relate a person to an object, with relationship attributes (a role, say)."""
        enqueue(AddRelationship(person_id, object_type_id, object_id,  # type: ignore[arg-type]
                                attributes, workspace=self.name))

    def delete_relationship(self, person_id: PersonRef, object_type_id: int | str,
                            object_id: str | int) -> None:
        """End a person's relationship to an object."""
        enqueue(DeleteRelationship(person_id, object_type_id, object_id,  # type: ignore
                                   workspace=self.name))

    def add_to_segment(self, segment_id: int, people: Iterable[PersonRef]) -> None:
        """Add people (ids, or ``Person``s of one identifier type) to a manual segment, in
        requests of up to 1,000."""
        for chunk in _chunks(people):
            enqueue(AddToSegment(segment_id, chunk, workspace=self.name))

    def remove_from_segment(self, segment_id: int, people: Iterable[PersonRef]) -> None:
        """Remove people from a manual segment."""
        for chunk in _chunks(people):
            enqueue(RemoveFromSegment(segment_id, chunk, workspace=self.name))

    # -- transactional messages (the App API) ---------------------------------------------

    def send_email(self, person_id: PersonRef, transactional_message_id: int | str | None = None,
                   /, *, message_data: dict[str, Any] | None = None, **fields: Any) -> str:
        """Queue a transactional email to a person, from a transactional message (its id or
        trigger name) rendered with ``message_data``, with the App API's fields (``to``,
        ``subject``, ``body``, ...; ``**{"from": ...}``). Returns the message's id. For
        Django's own ``send_mail()``, see ``django_cio.mail.EmailBackend``."""
        return self._send(SendEmail(person_id, transactional_message_id,  # type: ignore[arg-type]
                                    message_data or {}, fields, workspace=self.name))

    def send_push(self, person_id: PersonRef, transactional_message_id: int | str, /, *,
                  message_data: dict[str, Any] | None = None, **fields: Any) -> str:
        """Queue a transactional push notification to a person's devices (``to``: "all",
        "last_used" or a device token; ``title``, ``message``, ``custom_data``, ...)."""
        return self._send(SendPush(person_id, transactional_message_id,  # type: ignore[arg-type]
                                   message_data or {}, fields, workspace=self.name))

    def send_sms(self, person_id: PersonRef, transactional_message_id: int | str, /, *,
                 message_data: dict[str, Any] | None = None, **fields: Any) -> str:
        """Queue a transactional SMS to a person (``to``: a phone number in E.164 form)."""
        return self._send(SendSms(person_id, transactional_message_id,  # type: ignore[arg-type]
                                  message_data or {}, fields, workspace=self.name))

    def _send(self, message: SendMessage) -> str:
        """Queue a message; fail at the call, not in a worker, without the key to send it."""
        route(message)
        config = get_settings(message.workspace or DEFAULT_WORKSPACE)
        if not config.app_api_key and not backend_class().delivers_inline:
            raise no_app_key(config)
        enqueue(message)
        return message.id


def _chunks(people: Iterable[PersonRef]) -> Iterator[list[Any]]:
    people = iter(people)
    while chunk := list(itertools.islice(people, MAX_SEGMENT_PEOPLE)):
        yield chunk


def workspace(name: str) -> Workspace:
    """The verbs for workspace ``name`` (``"default"`` or a key of ``WORKSPACES``); raises
    ``ConfigurationError`` for a name the settings do not have."""
    return Workspace(name)


def move(person_id: PersonRef, old: str, new: str, /, **attributes: Any) -> None:
    """Move a person from workspace ``old`` to ``new`` (their data region changed): deleted in
    ``old`` and, once Customer.io has taken the delete, identified in ``new`` with these
    attributes (for a registered model, ``registry.attributes_for(instance)``)."""
    if old == new:
        raise ValidationError("move", "to", "is the workspace the person is in")
    get_settings(new)  # an unknown name fails here
    enqueue(Move(person_id, to=new, attributes=attributes,  # type: ignore[arg-type]
                 workspace=old))
