"""Track API operations: one frozen dataclass per kind, validated when it is built.

An operation knows how to render itself as a v1 request (method, quoted path, JSON body) and as
a v2 batch item, and how to round-trip through JSON for the broker. Values are normalised to
what JSON and Customer.io accept (datetimes become Unix seconds) and checked against the Track
API limits, so a bad call fails in the caller's code, not hours later in a worker.
Errors name the op kind, the field and the limit, never the value (attribute values are PII).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple
from urllib.parse import quote
from uuid import UUID

from django.conf import settings
from django.utils import timezone as django_timezone
from django.utils.functional import Promise
from ulid import ULID

from .exceptions import ValidationError

# Track API limits (Customer.io docs, "Limits"); sizes are UTF-8 bytes.
MAX_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
# A page view's name is its URL; the docs give no separate limit, so URLs get the value limit.
MAX_PAGE_URL_BYTES = 1000
# v2: one op (an /entity body or a batch item) must stay under 32 KB, a batch under 500 KB.
# Decimal kilobytes: the stricter reading.
MAX_V2_OP_BYTES = 32_000
MAX_BATCH_BYTES = 500_000
# Not documented; FCM tokens run past 150 bytes, so tokens get the attribute value limit.
MAX_DEVICE_TOKEN_BYTES = 1000
PLATFORMS = ("ios", "android")
# Nesting past this is a mistake (or a cycle), not customer data.
MAX_DEPTH = 32
# Unix seconds stay below this until the year 5138; bigger looks like milliseconds.
_MAX_TIMESTAMP = 10**11
_MAX_INT = 2**63
_PLAIN_KEY = re.compile(r"[\w \-]{1,40}")  # fullmatch: "$" would let a final newline in

Json = dict[str, Any]


class V1Request(NamedTuple):
    method: str
    path: str
    body: Json


def dumps(value: Any) -> bytes:
    """The wire encoding: compact UTF-8 JSON (also what every size limit is measured on)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def new_event_id() -> str:
    """A ULID: Customer.io drops an event whose id it has already seen, so retries are safe."""
    return str(ULID())


def event_id_time(event_id: Any) -> float | None:
    """When an id ``new_event_id`` made was made, in seconds (None for an id given by the
    caller, which may be anything)."""
    try:
        return float(ULID.from_str(event_id).timestamp)
    except (TypeError, ValueError):
        return None


def person_hash(person_id: str) -> str:
    """A short, stable stand-in for a person id in logs (ids may be emails).

    Keyed with ``SECRET_KEY`` so that hashing a list of known emails doesn't reverse it.
    """
    key = str(getattr(settings, "SECRET_KEY", "")).encode() if settings.configured else b""
    return hmac.new(key, person_id.encode(errors="replace"), hashlib.sha256).hexdigest()[:12]


def safe_label(key: str) -> str:
    """A key for an error message, unless it might be data (an email used as a key, say)."""
    return key if _PLAIN_KEY.fullmatch(key) else "<key>"


def _utf8(kind: str, where: str, text: str) -> bytes:
    if "\x00" in text:
        # PostgreSQL's JSON refuses it: the op could be neither parked nor dead-lettered.
        raise ValidationError(kind, where, "contains a NUL character")
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValidationError(kind, where, "is not valid Unicode (a lone surrogate)") from None


def unix_seconds(moment: datetime | date) -> int:
    """Datetimes and dates as Unix seconds.

    Naive datetimes are in Django's ``TIME_ZONE`` (as Django itself reads them), UTC outside
    a configured project; dates are midnight UTC.
    """
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=dt_timezone.utc)
    if moment.tzinfo is None:
        zone = django_timezone.get_default_timezone() if settings.configured else dt_timezone.utc
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp())


def json_safe(value: Any, kind: str, where: str, depth: int = 0) -> Any:
    """``value`` as plain JSON types, or ``ValidationError`` naming ``where`` it went wrong."""
    if depth > MAX_DEPTH:
        raise ValidationError(kind, where, f"nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _utf8(kind, where, value)
        return value
    if isinstance(value, int):
        if not -_MAX_INT < value < _MAX_INT:
            raise ValidationError(kind, where, "is an integer too large for JSON; send a string")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(kind, where, "is NaN or infinite, which JSON cannot carry")
        return value
    if isinstance(value, (datetime, date)):
        return unix_seconds(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValidationError(kind, where, "is NaN or infinite, which JSON cannot carry")
        if value != value.to_integral_value():
            return json_safe(float(value), kind, where, depth)
        if not -_MAX_INT < value < _MAX_INT:  # before int(): int(Decimal("1e9999999")) hangs
            raise ValidationError(kind, where, "is an integer too large for JSON; send a string")
        return int(value)
    if isinstance(value, (UUID, Promise)):
        return json_safe(str(value), kind, where, depth)
    if isinstance(value, Enum):
        return json_safe(value.value, kind, where, depth)
    if isinstance(value, Mapping):
        clean = {}
        for key, item in value.items():
            key = _key(key, kind, where)
            clean[key] = json_safe(item, kind, f"{where}.{safe_label(key)}", depth + 1)
        return clean
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item, kind, f"{where}[{index}]", depth + 1)
                for index, item in enumerate(value)]
    raise ValidationError(kind, where, f"is a {type(value).__name__}, which JSON cannot carry")


def _key(key: Any, kind: str, where: str) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValidationError(kind, where, f"has a {type(key).__name__} key; keys must be strings")
    try:
        key = str(key)
    except ValueError:  # an int past the 4,300 digits str() converts
        raise ValidationError(kind, where, "has an integer key too large for a name") from None
    _utf8(kind, where, key)
    return key


def _check_size(kind: str, where: str, size: int, limit: int, what: str = "is") -> None:
    if size > limit:
        raise ValidationError(
            kind, where, f"{what} {size} bytes; the limit is {limit}", f"{limit} bytes"
        )


def check_id(kind: str, name: str, value: Any, limit: int = MAX_ID_BYTES) -> str:
    """Person ids, anonymous ids and device tokens: non-blank strings (ints are converted)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, UUID)):
        kind_of = type(value).__name__
        raise ValidationError(kind, name, f"must be a string or an integer, not {kind_of}")
    try:
        value = str(value)
    except ValueError:  # an int past the 4,300 digits str() converts: far past any limit
        raise ValidationError(kind, name, f"is an integer of more than {limit} digits",
                              f"{limit} bytes") from None
    if not value.strip():
        raise ValidationError(kind, name, "must not be blank")
    if value in (".", ".."):
        # HTTP clients resolve them as path segments: the request would reach another URL.
        raise ValidationError(kind, name, "must not be '.' or '..'")
    _check_size(kind, name, len(_utf8(kind, name, value)), limit)
    return value


def check_name(kind: str, name: str, value: Any, limit: int) -> str:
    if not isinstance(value, (str, Promise)) or not str(value).strip():
        raise ValidationError(kind, name, "must be a non-blank string")
    value = str(value)
    _check_size(kind, name, len(_utf8(kind, name, value)), limit)
    return value


def check_attributes(kind: str, attributes: Mapping[str, Any]) -> Json:
    """Person attributes: <= 300 names of <= 150 bytes, each value <= 1000 bytes."""
    if not isinstance(attributes, Mapping):
        raise ValidationError(kind, "attributes", "must be a mapping")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValidationError(
            kind, "attributes", f"has {len(attributes)} entries; the limit is {MAX_ATTRIBUTES}",
            f"{MAX_ATTRIBUTES} attributes",
        )
    clean = {}
    for name, value in attributes.items():
        name = _key(name, kind, "attributes")
        where = f"attributes.{safe_label(name)}"
        if not name:
            raise ValidationError(kind, "attributes", "has an empty attribute name")
        _check_size(kind, where, len(name.encode()), MAX_ATTRIBUTE_NAME_BYTES, "name is")
        value = json_safe(value, kind, where, 1)
        size = len(value.encode()) if isinstance(value, str) else len(dumps(value))
        _check_size(kind, where, size, MAX_ATTRIBUTE_VALUE_BYTES, "value is")
        clean[name] = value
    return clean


def check_data(kind: str, data: Mapping[str, Any]) -> Json:
    """Event data: any JSON object up to 100 KB encoded."""
    if not isinstance(data, Mapping):
        raise ValidationError(kind, "data", "must be a mapping")
    clean = json_safe(data, kind, "data")
    _check_size(kind, "data", len(dumps(clean)), MAX_EVENT_DATA_BYTES, "is encoded")
    return clean


def check_timestamp(kind: str, name: str, value: Any) -> int:
    if isinstance(value, (datetime, date)):
        value = unix_seconds(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(kind, name, "must be Unix seconds (an int) or a datetime")
    if value >= _MAX_TIMESTAMP:
        raise ValidationError(kind, name, "is too large: Unix seconds, not milliseconds")
    return value


def check_event_id(kind: str, value: Any) -> str:
    try:
        return str(ULID.from_str(value))
    except (TypeError, ValueError, AttributeError):
        raise ValidationError(
            kind, "id", "must be a ULID (Customer.io dedupes events by it)"
        ) from None


def _now() -> int:
    return int(time.time())


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

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    if TYPE_CHECKING:
        # Every op has one: a field, or a property on anonymous events and merges. Declared
        # for type checkers only, or dataclasses would take the property as a field default.
        @property
        def person_id(self) -> str: ...

    def v1(self) -> V1Request:
        raise NotImplementedError

    def v2(self) -> Json:
        raise NotImplementedError

    def _person(self, **fields: Any) -> Json:
        return {"type": "person", "identifiers": {"id": self.person_id},
                "action": self.action, **fields}

    @cached_property
    def v2_bytes(self) -> bytes:
        """The encoded v2 item, as a batch request carries it (computed once)."""
        return dumps(self.v2())

    def fits_v2(self) -> bool:
        """Whether this op may travel in a v2 batch (else it goes as a v1 request)."""
        return self.batchable and len(self.v2_bytes) <= MAX_V2_OP_BYTES

    def __repr__(self) -> str:
        fields = " ".join(f"{key}={value}" for key, value in self.redacted().items())
        return f"<{type(self).__name__} {fields}>"

    def to_dict(self) -> Json:
        """A JSON-ready dict that ``Operation.from_dict`` turns back into this op."""
        return {"kind": self.kind, **dataclasses.asdict(self)}

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
class _PersonOp(Operation):
    """An op about one person and nothing else (delete, suppress, unsuppress)."""

    person_id: str

    def __post_init__(self) -> None:
        self._set("person_id", check_id(self.kind, "person_id", self.person_id))

    def v2(self) -> Json:
        return self._person()


@dataclass(frozen=True, repr=False)
class Identify(Operation):
    """Create or update a person (an upsert, safe to repeat).

    ``timestamp`` is when the app made the change (Unix seconds, fixed at creation). Customer.io
    orders attribute updates by it, so an identify that arrives late (a retry, a parked or
    replayed message) cannot overwrite newer attributes. ``None`` sends none (messages queued
    by a version that did not set it).
    """

    kind = "identify"
    action = "identify"
    person_id: str
    attributes: Json = field(default_factory=dict)
    timestamp: int | None = field(default_factory=_now)

    def __post_init__(self) -> None:
        self._set("person_id", check_id(self.kind, "person_id", self.person_id))
        self._set("attributes", check_attributes(self.kind, self.attributes))
        if self.timestamp is not None:
            self._set("timestamp", check_timestamp(self.kind, "timestamp", self.timestamp))

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
class Event(Operation):
    """A named event for a person. ``id`` (a ULID) is fixed at creation and kept on retries."""

    kind = "event"
    action = "event"
    v1_type: ClassVar[str | None] = None
    name_limit: ClassVar[int] = MAX_EVENT_NAME_BYTES
    person_id: str
    name: str
    data: Json = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    timestamp: int = field(default_factory=_now)

    def __post_init__(self) -> None:
        self._set("person_id", check_id(self.kind, "person_id", self.person_id))
        _check_event_fields(self, self.name_limit)

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
class AnonymousEvent(Operation):
    """An event (or, with ``type="page"``, a page view) before the person is known."""

    kind = "anonymous_event"
    action = "event"
    batchable = False
    anonymous_id: str
    name: str
    data: Json = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    timestamp: int = field(default_factory=_now)
    type: str = "event"

    def __post_init__(self) -> None:
        self._set("anonymous_id", check_id(self.kind, "anonymous_id", self.anonymous_id))
        if self.type not in ("event", "page"):
            raise ValidationError(self.kind, "type", "must be 'event' or 'page'")
        _check_event_fields(self, Page.name_limit if self.type == "page" else Event.name_limit)

    @property
    def person_id(self) -> str:
        return self.anonymous_id

    def v1(self) -> V1Request:
        body = _v1_event_body(self, self.type if self.type != "event" else None)
        return V1Request("POST", "/api/v1/events", {**body, "anonymous_id": self.anonymous_id})

    def v2(self) -> Json:
        raise TypeError("Customer.io's v2 API has no anonymous events; send them with v1")


@dataclass(frozen=True, repr=False)
class Delete(_PersonOp):
    """Delete a person and their data."""

    kind = "delete"
    action = "delete"

    def v1(self) -> V1Request:
        return V1Request("DELETE", _path("customers", self.person_id), {})


@dataclass(frozen=True, repr=False)
class Suppress(_PersonOp):
    """Delete a person and refuse any later data for that id."""

    kind = "suppress"
    action = "suppress"

    def v1(self) -> V1Request:
        return V1Request("POST", _path("customers", self.person_id, "suppress"), {})


@dataclass(frozen=True, repr=False)
class Unsuppress(_PersonOp):
    kind = "unsuppress"
    action = "unsuppress"

    def v1(self) -> V1Request:
        return V1Request("POST", _path("customers", self.person_id, "unsuppress"), {})


@dataclass(frozen=True, repr=False)
class AddDevice(Operation):
    """Register a push device (``platform`` is ``"ios"`` or ``"android"``)."""

    kind = "add_device"
    action = "add_device"
    person_id: str
    token: str
    platform: str
    last_used: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._set("person_id", check_id(self.kind, "person_id", self.person_id))
        self._set("token", check_id(self.kind, "token", self.token, MAX_DEVICE_TOKEN_BYTES))
        if self.platform not in PLATFORMS:
            raise ValidationError(self.kind, "platform", f"must be one of {', '.join(PLATFORMS)}")
        if self.last_used is not None:
            self._set("last_used", check_timestamp(self.kind, "last_used", self.last_used))
        self._set("attributes", _device_attributes(self.kind, self.attributes))

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
class DeleteDevice(Operation):
    kind = "delete_device"
    action = "delete_device"
    person_id: str
    token: str

    def __post_init__(self) -> None:
        self._set("person_id", check_id(self.kind, "person_id", self.person_id))
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

    def __post_init__(self) -> None:
        self._set("primary", check_id(self.kind, "primary", self.primary))
        self._set("secondary", check_id(self.kind, "secondary", self.secondary))
        if self.primary == self.secondary:
            raise ValidationError(self.kind, "secondary", "must differ from primary")

    @property
    def person_id(self) -> str:
        return self.primary

    def _body(self) -> Json:
        return {"primary": {"id": self.primary}, "secondary": {"id": self.secondary}}

    def v1(self) -> V1Request:
        return V1Request("POST", "/api/v1/merge_customers", self._body())

    def v2(self) -> Json:
        # Merge is the one person action without "identifiers".
        return {"type": "person", "action": self.action, **self._body()}


OPERATIONS: dict[str, type[Operation]] = {
    cls.kind: cls
    for cls in (Identify, Event, Page, AnonymousEvent, Delete, Suppress, Unsuppress,
                AddDevice, DeleteDevice, Merge)
}
