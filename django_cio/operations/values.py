"""Values as an op holds them: normalised to what JSON and Customer.io accept (datetimes
become Unix seconds), checked against the Track API limits, with errors that name the op
kind, the field and the limit, never the value (attribute values are PII)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from datetime import date, datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from django.conf import settings
from django.utils import timezone as django_timezone
from django.utils.functional import Promise
from ulid import ULID

from ..exceptions import ValidationError
from ..privacy import safe_label
from .limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_DEPTH,
    MAX_EVENT_DATA_BYTES,
    MAX_ID_BYTES,
    MAX_INT,
    MAX_TIMESTAMP,
)

Json = dict[str, Any]


def dumps(value: Any) -> bytes:
    """The wire encoding: compact UTF-8 JSON (also what every size limit is measured on)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def new_event_id() -> str:
    """A ULID: Customer.io drops an event whose id it has already seen, so retries are safe."""
    return str(ULID())


def row_event_id(seconds: int, *row: Any) -> str:
    """A ULID of its own for the event a row stands for (its model, pk, event name, time):
    a backfill run twice, or after the live event, sends the same id, which Customer.io drops
    as a repeat."""
    digest = hashlib.sha256("\x00".join(map(str, row)).encode()).digest()[:10]
    return str(ULID.from_bytes(min(seconds * 1000, 2**48 - 1).to_bytes(6, "big") + digest))


def event_id_time(event_id: Any) -> float | None:
    """When an id ``new_event_id`` made was made, in seconds (None for an id given by the
    caller, which may be anything)."""
    try:
        return float(ULID.from_str(event_id).timestamp)
    except (TypeError, ValueError):
        return None


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
        if not -MAX_INT < value < MAX_INT:
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
        if not -MAX_INT < value < MAX_INT:  # before int(): int(Decimal("1e9999999")) hangs
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


def check_positive_int(kind: str, name: str, value: Any, what: str = "") -> int:
    """A positive integer, or a string of its digits (ids Customer.io numbers)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < MAX_INT:
        raise ValidationError(kind, name, f"must be a positive integer{what}")
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
    if value >= MAX_TIMESTAMP:
        raise ValidationError(kind, name, "is too large: Unix seconds, not milliseconds")
    return value


def check_event_id(kind: str, value: Any) -> str:
    try:
        return str(ULID.from_str(value))
    except (TypeError, ValueError, AttributeError):
        raise ValidationError(
            kind, "id", "must be a ULID (Customer.io dedupes events by it)"
        ) from None


def now_seconds() -> int:
    return int(time.time())

