"""The op kinds: one frozen dataclass per Track API operation, validated when it is built.

An operation knows how to render itself as a v1 request (method, quoted path, JSON body) and as
a v2 batch item, and how to round-trip through JSON for the broker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple
from urllib.parse import quote

from ..conf import WORKSPACE_NAME
from ..exceptions import ValidationError
from ..privacy import person_hash, safe_label, shown_id
from .identifiers import check_person, identifiers, person_key, v1_readable
from .limits import (
    MAX_DEVICE_TOKEN_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_PAGE_URL_BYTES,
    MAX_V2_OP_BYTES,
    PLATFORMS,
)
from .values import (
    Json,
    check_attributes,
    check_data,
    check_event_id,
    check_id,
    check_name,
    check_timestamp,
    dumps,
    new_event_id,
    now_seconds,
)


class V1Request(NamedTuple):
    """One HTTP request to the Track API: v1, or v2's ``/entity`` for one op."""

    method: str
    path: str
    body: Json


# Every op kind by name, for rebuilding queued ops (filled by Operation.__init_subclass__).
OPERATIONS: dict[str, type[Operation]] = {}


def _path(*parts: str) -> str:
    # Ids may hold '/', '+', '@' or spaces: quote everything, as Customer.io expects.
    return "/api/v1/" + "/".join(quote(part, safe="") for part in parts)


# Frozen values with a redacted repr (see __repr__): ids and attribute values are PII.
@dataclass(frozen=True, repr=False)
class Operation:
    """Base of all operations. ``kind`` names it in queues and errors, ``action`` in v2."""

    kind: ClassVar[str]
    action: ClassVar[str]
    # Anonymous events have no v2 form; they always travel as v1 requests.
    batchable: ClassVar[bool] = True
    # Which Customer.io API takes it: the Track API, or the App API (transactional messages).
    api: ClassVar[str] = "track"
    # Where it goes (``CUSTOMERIO["WORKSPACES"]``); None until ``routing.route`` picks one.
    workspace: str | None = field(default=None, kw_only=True, compare=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in vars(cls):
            OPERATIONS[cls.kind] = cls

    def __post_init__(self) -> None:
        if self.workspace is not None:
            self.route_to(self.workspace)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def route_to(self, workspace: str) -> None:
        """Send this op to ``workspace`` (set once, before it is queued)."""
        if not isinstance(workspace, str) or not WORKSPACE_NAME.fullmatch(workspace):
            raise ValidationError(self.kind, "workspace", "must be a workspace name (lowercase "
                                  "letters, digits, '-' or '_')")
        self._set("workspace", workspace)

    if TYPE_CHECKING:
        # Every op has one: a field, or a property on anonymous events and merges. Declared
        # for type checkers only, or dataclasses would take the property as a field default.
        @property
        def person_id(self) -> str: ...

    @property
    def person(self) -> str:
        """Who this op is about, as one key per identifier type and value (``person_key``)."""
        return self.person_id

    @property
    def people(self) -> tuple[str, ...]:
        """The persons this op concerns (a merge: both), as ``person`` keys."""
        return (self.person,)

    @property
    def id_types(self) -> frozenset[str]:
        """The identifier types this op names its people by."""
        return frozenset(("id",))

    def v1_safe(self) -> bool:
        """Whether v1 reads this op as meant (see ``identifiers``)."""
        return True

    def single(self) -> V1Request:
        """The request that sends this op alone: v1 where v1 cannot misread it, else v2's
        ``/api/v2/entity``."""
        return self.v1() if self.v1_safe() else V1Request("POST", "/api/v2/entity", self.v2())

    def v1(self) -> V1Request:
        raise NotImplementedError

    def v2(self) -> Json:
        raise NotImplementedError

    def _v2_only_fits(self, field: str = "attributes") -> None:
        """An op that cannot go as v1 must fit a v2 item (v1 takes bigger ones)."""
        if not self.v1_safe() and len(self.v2_bytes) > MAX_V2_OP_BYTES:
            raise ValidationError(self.kind, field, f"make the op {len(self.v2_bytes)} bytes; "
                                  f"it goes as v2 (objects, relationships, people by email or "
                                  f"cio_id or an email-shaped id), whose limit is "
                                  f"{MAX_V2_OP_BYTES}", f"{MAX_V2_OP_BYTES} bytes")

    @cached_property
    def v2_bytes(self) -> bytes:
        """The encoded v2 item, as a batch request carries it (computed once)."""
        return dumps(self.v2())

    def fits_v2(self) -> bool:
        """Whether this op may travel in a v2 batch (else it goes as a v1 request)."""
        return self.batchable and len(self.v2_bytes) <= MAX_V2_OP_BYTES

    def __repr__(self) -> str:
        shown = {**self.redacted(), "person": shown_id(self.person_id)}
        fields = " ".join(f"{key}={value}" for key, value in shown.items())
        return f"<{type(self).__name__} {fields}>"

    def to_dict(self) -> Json:
        """A JSON-ready dict that ``Operation.from_dict`` turns back into this op."""
        fields = dataclasses.asdict(self)
        if fields["workspace"] in (None, "default"):  # as queued before there were several
            del fields["workspace"]
        for name in ("id_type", "primary_type", "secondary_type"):  # likewise
            if fields.get(name) == "id":
                del fields[name]
        return {"kind": self.kind, **fields}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Operation:
        """Rebuild (and re-validate) an op from ``to_dict()`` output, e.g. a queued message."""
        if not isinstance(data, Mapping):
            raise ValidationError("operation", "kind", "is missing: an operation must be a mapping")
        fields = dict(data)
        kind = fields.pop("kind", None)
        cls = OPERATIONS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValidationError("operation", "kind", "is not a known operation kind")
        if cls is Identify:  # queued before identifies carried the time of the change
            fields.setdefault("timestamp", None)
        try:
            return cls(**fields)
        except TypeError:
            raise ValidationError(cls.kind, "fields", "do not match this operation kind") from None

    def redacted(self) -> Json:
        """What may be logged: kind, a hash of the person id and the field names, no values."""
        info: Json = {"kind": self.kind, "person": person_hash(self.person_id)}
        for name in ("attributes", "data"):
            if isinstance(getattr(self, name, None), dict):
                info[name] = sorted(getattr(self, name))
        return info


@dataclass(frozen=True, repr=False)
class PersonOp(Operation):
    """An op about one person, named by ``person_id`` (a value, or a ``Person``) of identifier
    type ``id_type``."""

    person_id: str
    id_type: str = field(default="id", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        value, id_type = check_person(self.kind, "person_id", self.person_id, self.id_type)
        self._set("person_id", value)
        self._set("id_type", id_type)

    @property
    def person(self) -> str:
        return person_key(self.person_id, self.id_type)

    @property
    def id_types(self) -> frozenset[str]:
        return frozenset((self.id_type,))

    def v1_safe(self) -> bool:
        return v1_readable(self.person_id, self.id_type)

    def _person(self, **fields: Any) -> Json:
        return {"type": "person", "identifiers": identifiers(self.person_id, self.id_type),
                "action": self.action, **fields}

    def v2(self) -> Json:
        return self._person()


@dataclass(frozen=True, repr=False)
class Identify(PersonOp):
    """Create or update a person (an upsert, safe to repeat).

    ``timestamp`` is when the app made the change (Unix seconds, fixed at creation). Customer.io
    orders attribute updates by it, so an identify that arrives late (a retry, a parked or
    replayed message) cannot overwrite newer attributes. ``None`` sends none (messages queued
    by a version that did not set it).
    """

    kind = "identify"
    action = "identify"
    attributes: Json = field(default_factory=dict)
    timestamp: int | None = field(default_factory=now_seconds)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("attributes", check_attributes(self.kind, self.attributes))
        if self.timestamp is not None:
            self._set("timestamp", check_timestamp(self.kind, "timestamp", self.timestamp))
        self._v2_only_fits()

    def v1_safe(self) -> bool:
        return super().v1_safe() and _v1_reads(self.attributes)

    def v1(self) -> V1Request:
        body = dict(self.attributes)
        if self.timestamp is not None:  # v1 takes it as the reserved attribute _timestamp
            body["_timestamp"] = self.timestamp
        return V1Request("PUT", _path("customers", self.person_id), body)

    def v2(self) -> Json:
        item = self._person(attributes=dict(self.attributes))
        if self.timestamp is not None:
            item["timestamp"] = self.timestamp
        return item


# Attributes a v1 identify body reads as its own fields (Customer.io's schema types them), or
# takes for something else (_timestamp: the update's time): v2 keeps them as plain attributes.
_V1_FIELDS: dict[str, type] = {"id": str, "email": str, "anonymous_id": str, "created_at": int,
                               "_update": bool, "unsubscribed": bool}
_V1_RESERVED = ("_timestamp", "cio_relationships", "cio_subscription_preferences")


def _v1_reads(attributes: Json) -> bool:
    """Whether a v1 identify body with these attributes means what the v2 item means."""
    if any(name in attributes for name in _V1_RESERVED):
        return False
    for name, kind in _V1_FIELDS.items():
        value = attributes.get(name, kind())
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return False
    return True


def _check_event_fields(op: Event | AnonymousEvent, name_limit: int) -> None:
    op._set("name", check_name(op.kind, "name", op.name, name_limit))
    op._set("data", check_data(op.kind, op.data))
    op._set("id", check_event_id(op.kind, op.id))
    op._set("timestamp", check_timestamp(op.kind, "timestamp", op.timestamp))


def _v1_event_body(op: Event | AnonymousEvent, event_type: str | None) -> Json:
    body: Json = {"name": op.name, "data": dict(op.data), "id": op.id, "timestamp": op.timestamp}
    if event_type:
        body["type"] = event_type
    return body


@dataclass(frozen=True, repr=False)
class Event(PersonOp):
    """A named event for a person. ``id`` (a ULID) is fixed at creation and kept on retries."""

    kind = "event"
    action = "event"
    v1_type: ClassVar[str | None] = None
    name_limit: ClassVar[int] = MAX_EVENT_NAME_BYTES
    name: str
    data: Json = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    timestamp: int = field(default_factory=now_seconds)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_event_fields(self, self.name_limit)
        self._v2_only_fits("data")

    def v1(self) -> V1Request:
        return V1Request("POST", _path("customers", self.person_id, "events"),
                         _v1_event_body(self, self.v1_type))

    def v2(self) -> Json:
        return self._person(name=self.name, id=self.id, timestamp=self.timestamp,
                            attributes=dict(self.data))


@dataclass(frozen=True, repr=False)
class Page(Event):
    """A page view by a person; ``name`` is the URL."""

    kind = "page"
    action = "page"
    v1_type = "page"
    name_limit = MAX_PAGE_URL_BYTES

    @property
    def url(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class Screen(Event):
    """A mobile app screen view by a person; ``name`` is the screen's name."""

    kind = "screen"
    action = "screen"
    v1_type = "screen"


@dataclass(frozen=True, repr=False)
class AnonymousEvent(Operation):
    """An event (or, with ``type="page"`` or ``"screen"``, a view) before the person is
    known."""

    kind = "anonymous_event"
    action = "event"
    batchable = False
    anonymous_id: str
    name: str
    data: Json = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    timestamp: int = field(default_factory=now_seconds)
    type: str = "event"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("anonymous_id", check_id(self.kind, "anonymous_id", self.anonymous_id))
        if self.type not in ("event", "page", "screen"):
            raise ValidationError(self.kind, "type", "must be 'event', 'page' or 'screen'")
        _check_event_fields(self, Page.name_limit if self.type == "page" else Event.name_limit)

    @property
    def person_id(self) -> str:
        return self.anonymous_id

    def v1(self) -> V1Request:
        body = _v1_event_body(self, self.type if self.type != "event" else None)
        return V1Request("POST", "/api/v1/events", {**body, "anonymous_id": self.anonymous_id})

    def v2(self) -> Json:
        raise ValidationError(self.kind, "v2", "does not exist: Customer.io's v2 API has no "
                              "anonymous events (they are sent with v1)")


@dataclass(frozen=True, repr=False)
class Delete(PersonOp):
    """Delete a person and their data."""

    kind = "delete"
    action = "delete"

    def v1(self) -> V1Request:
        return V1Request("DELETE", _path("customers", self.person_id), {})


@dataclass(frozen=True, repr=False)
class Move(Delete):
    """Move a person to workspace ``to`` (their data region changed): a delete in this one and,
    once Customer.io has taken it, an identify with ``attributes`` in ``to`` (``arrival``)."""

    kind = "move"
    to: str = ""
    attributes: Json = field(default_factory=dict)
    timestamp: int | None = field(default_factory=now_seconds)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.to, str) or not WORKSPACE_NAME.fullmatch(self.to):
            raise ValidationError(self.kind, "to", "must be a workspace name")
        self._set("attributes", check_attributes(self.kind, self.attributes))
        if self.timestamp is not None:
            self._set("timestamp", check_timestamp(self.kind, "timestamp", self.timestamp))

    def arrival(self) -> Identify:
        """The identify in the new workspace, timed when the move was made."""
        return Identify(self.person_id, self.attributes, timestamp=self.timestamp,
                        workspace=self.to, id_type=self.id_type)


@dataclass(frozen=True, repr=False)
class Suppress(PersonOp):
    """Delete a person and refuse any later data for that id."""

    kind = "suppress"
    action = "suppress"

    def v1(self) -> V1Request:
        return V1Request("POST", _path("customers", self.person_id, "suppress"), {})


@dataclass(frozen=True, repr=False)
class Unsuppress(PersonOp):
    kind = "unsuppress"
    action = "unsuppress"

    def v1(self) -> V1Request:
        return V1Request("POST", _path("customers", self.person_id, "unsuppress"), {})


@dataclass(frozen=True, repr=False)
class AddDevice(PersonOp):
    """Register a push device (``platform`` is ``"ios"`` or ``"android"``)."""

    kind = "add_device"
    action = "add_device"
    token: str
    platform: str
    last_used: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("token", check_id(self.kind, "token", self.token, MAX_DEVICE_TOKEN_BYTES))
        if self.platform not in PLATFORMS:
            raise ValidationError(self.kind, "platform", f"must be one of {', '.join(PLATFORMS)}")
        if self.last_used is not None:
            self._set("last_used", check_timestamp(self.kind, "last_used", self.last_used))
        self._set("attributes", _device_attributes(self.kind, self.attributes))
        self._v2_only_fits()

    def _device(self, token_key: str) -> Json:
        device: Json = {token_key: self.token, "platform": self.platform}
        if self.last_used is not None:
            device["last_used"] = self.last_used
        if self.attributes:
            device["attributes"] = dict(self.attributes)
        return device

    def v1(self) -> V1Request:
        # v1 calls the token "id"; v2 calls it "token".
        return V1Request("PUT", _path("customers", self.person_id, "devices"),
                         {"device": self._device("id")})

    def v2(self) -> Json:
        return self._person(device=self._device("token"))


def _device_attributes(kind: str, attributes: Mapping[str, Any]) -> dict[str, str]:
    # Device attributes are strings in the Track API; booleans become "true"/"false".
    clean = check_attributes(kind, attributes)
    for name, value in clean.items():
        if isinstance(value, bool):
            clean[name] = "true" if value else "false"
        elif not isinstance(value, str):
            raise ValidationError(kind, f"attributes.{safe_label(name)}", "must be a string")
    return clean


@dataclass(frozen=True, repr=False)
class DeleteDevice(PersonOp):
    kind = "delete_device"
    action = "delete_device"
    token: str

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("token", check_id(self.kind, "token", self.token, MAX_DEVICE_TOKEN_BYTES))

    def v1(self) -> V1Request:
        return V1Request("DELETE", _path("customers", self.person_id, "devices", self.token), {})

    def v2(self) -> Json:
        return self._person(device={"token": self.token})


@dataclass(frozen=True, repr=False)
class Merge(Operation):
    """Merge ``secondary`` into ``primary`` (which must exist); ``secondary`` is deleted."""

    kind = "merge"
    action = "merge"
    primary: str
    secondary: str
    primary_type: str = field(default="id", kw_only=True)
    secondary_type: str = field(default="id", kw_only=True)

    @property
    def people(self) -> tuple[str, ...]:
        return (person_key(self.primary, self.primary_type),
                person_key(self.secondary, self.secondary_type))

    @property
    def id_types(self) -> frozenset[str]:
        return frozenset((self.primary_type, self.secondary_type))

    def __post_init__(self) -> None:
        super().__post_init__()
        for side in ("primary", "secondary"):
            value, id_type = check_person(self.kind, side, getattr(self, side),
                                          getattr(self, f"{side}_type"), f"{side}_type")
            self._set(side, value)
            self._set(f"{side}_type", id_type)
        if self.people[0] == self.people[1]:
            raise ValidationError(self.kind, "secondary", "must differ from primary")

    @property
    def person_id(self) -> str:
        return self.primary

    @property
    def person(self) -> str:
        return self.people[0]

    def _body(self) -> Json:
        return {"primary": identifiers(self.primary, self.primary_type),
                "secondary": identifiers(self.secondary, self.secondary_type)}

    def v1(self) -> V1Request:
        return V1Request("POST", "/api/v1/merge_customers", self._body())

    def v2(self) -> Json:
        # Merge is the one person action without "identifiers".
        return {"type": "person", "action": self.action, **self._body()}


