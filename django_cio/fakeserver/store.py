"""What the fake Track API remembers: people, events, devices, and counts of what it saw.

Every request is first turned into v2 item form (v1 bodies included), then checked in strict
mode against the Track API limits and applied, so v1 and v2 share one set of rules.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

from ..operations import dumps
from ..operations.limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_DEVICE_TOKEN_BYTES,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    MAX_OBJECT_ATTRIBUTES_BYTES,
    MAX_PAGE_URL_BYTES,
    MAX_SEGMENT_PEOPLE,
    PLATFORMS,
)

Json = dict[str, Any]
_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$", re.IGNORECASE)
ID_TYPES = ("id", "email", "cio_id")
ACTIONS = {"identify", "event", "page", "screen", "delete", "suppress", "unsuppress",
           "add_device", "delete_device", "merge", "add_relationships", "delete_relationships"}
OBJECT_ACTIONS = {"identify", "delete", "add_relationships", "delete_relationships"}


class Invalid(Exception):
    """An op the real API would refuse; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _size(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else len(dumps(value))


def _check_id(field: str, value: Any, limit: int = MAX_ID_BYTES) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(field, "must be a non-empty string")
    if _size(value) > limit:
        raise Invalid(field, f"longer than {limit} bytes")
    return value


def _check_attributes(field: str, attributes: Any) -> None:
    if not isinstance(attributes, dict):
        raise Invalid(field, "must be an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise Invalid(field, f"more than {MAX_ATTRIBUTES} attributes")
    for name, value in attributes.items():
        if not name or _size(name) > MAX_ATTRIBUTE_NAME_BYTES:
            raise Invalid(f"{field}.{name[:40]}", "attribute name empty or too long")
        if _size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Invalid(f"{field}.{name}", f"value longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def _check_identifiers(field: str, identifiers: Any) -> None:
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        raise Invalid(field, "must hold exactly one identifier")
    (kind, value), = identifiers.items()
    if kind not in ID_TYPES:
        raise Invalid(field, f"must be one of {', '.join(ID_TYPES)}")
    _check_id(f"{field}.{kind}", value)
    if kind == "email" and "@" not in value:
        raise Invalid(f"{field}.email", "is not an email address")


def _check_object_identifiers(field: str, identifiers: Any) -> None:
    if not isinstance(identifiers, dict) or set(identifiers) != {"object_type_id", "object_id"}:
        raise Invalid(field, "must hold object_type_id and object_id")
    type_id = identifiers["object_type_id"]
    if not (isinstance(type_id, str) and type_id.isascii() and type_id.isdigit()):
        raise Invalid(f"{field}.object_type_id", "must be a string of digits")
    _check_id(f"{field}.object_id", identifiers["object_id"])


def _check_object_attributes(field: str, attributes: Any) -> None:
    _check_attributes(field, attributes)
    if _size(attributes) > MAX_OBJECT_ATTRIBUTES_BYTES:
        raise Invalid(field, f"larger than {MAX_OBJECT_ATTRIBUTES_BYTES} bytes in all")


def _check_relationships(relationships: Any, to_objects: bool) -> None:
    if not isinstance(relationships, list) or not relationships:
        raise Invalid("cio_relationships", "must be a non-empty list")
    for index, relationship in enumerate(relationships):
        field = f"cio_relationships[{index}]"
        if not isinstance(relationship, dict):
            raise Invalid(field, "must be an object")
        check_end = _check_object_identifiers if to_objects else _check_identifiers
        check_end(f"{field}.identifiers", relationship.get("identifiers"))
        _check_object_attributes(f"{field}.relationship_attributes",
                                 relationship.get("relationship_attributes", {}))


def _check_object(op: Json) -> None:
    if op.get("action") not in OBJECT_ACTIONS:
        raise Invalid("action", "unknown object action")
    _check_object_identifiers("identifiers", op.get("identifiers"))
    if op["action"] == "identify":
        _check_object_attributes("attributes", op.get("attributes", {}))
    elif op["action"] != "delete":
        _check_relationships(op.get("cio_relationships"), to_objects=False)


def _check_segment(op: Json) -> None:
    segment = str(op.get("segment_id"))
    if not (segment.isascii() and segment.isdigit() and int(segment) > 0):
        raise Invalid("segment_id", "must be a positive integer")
    ids = op.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_SEGMENT_PEOPLE:
        raise Invalid("ids", f"must be a list of 1 to {MAX_SEGMENT_PEOPLE} ids")
    for index, value in enumerate(ids):
        _check_id(f"ids[{index}]", value)
    if op.get("id_type") not in ID_TYPES:
        raise Invalid("id_type", f"must be one of {', '.join(ID_TYPES)}")


def check(op: Json) -> None:
    """Raise ``Invalid`` if the real Track API would refuse this v2-form op (sizes and
    values; ``spec`` checks the shapes)."""
    if op.get("type") == "object":
        return _check_object(op)
    if op.get("type") == "segment":
        return _check_segment(op)
    action = op.get("action")
    if op.get("type") != "person" or action not in ACTIONS:
        raise Invalid("action", "unknown type or action")
    if action == "merge":
        for side in ("primary", "secondary"):
            _check_identifiers(side, op.get(side))
        return
    if "anonymous_id" in op:
        _check_id("anonymous_id", op["anonymous_id"])
    else:
        _check_identifiers("identifiers", op.get("identifiers"))
    if "timestamp" in op and not isinstance(op["timestamp"], int):
        raise Invalid("timestamp", "must be an integer")
    if action == "identify":
        _check_attributes("attributes", op.get("attributes", {}))
    elif action in ("add_relationships", "delete_relationships"):
        _check_relationships(op.get("cio_relationships"), to_objects=True)
    elif action in ("event", "page", "screen"):
        limit = MAX_EVENT_NAME_BYTES if action == "event" else MAX_PAGE_URL_BYTES
        name = op.get("name")
        if not isinstance(name, str) or not name or _size(name) > limit:
            raise Invalid("name", f"must be a non-empty string of at most {limit} bytes")
        if not isinstance(op.get("attributes", {}), dict):
            raise Invalid("attributes", "must be an object")
        if _size(op.get("attributes", {})) > MAX_EVENT_DATA_BYTES:
            raise Invalid("attributes", f"event data larger than {MAX_EVENT_DATA_BYTES} bytes")
        if "id" in op and not (isinstance(op["id"], str) and _ULID.match(op["id"])):
            raise Invalid("id", "must be a ULID")
    elif action in ("add_device", "delete_device"):
        device = op.get("device")
        if not isinstance(device, dict):
            raise Invalid("device", "must be an object")
        _check_id("device.token", device.get("token"), MAX_DEVICE_TOKEN_BYTES)
        if action == "add_device" and device.get("platform") not in PLATFORMS:
            raise Invalid("device.platform", f"must be one of {', '.join(PLATFORMS)}")


class Store:
    """Thread-safe in-memory state of the fake workspace."""

    def __init__(self, request_log_size: int = 2_000, logged_body_bytes: int = 8_192) -> None:
        self.lock = threading.Lock()
        # Bounded: a load test sends millions of requests, and bulk batches are 500 KB each.
        self.request_log_size, self.logged_body_bytes = request_log_size, logged_body_bytes
        self.reset()

    def reset(self) -> None:
        with self.lock:
            # People by key: their id, or "email:<address>" for one known by email only.
            self.people: dict[str, Json] = {}
            self.cio_ids: dict[str, str] = {}  # cio_id -> key, given to each new person
            self.emails: dict[str, str] = {}  # email attribute -> key
            self.objects: dict[tuple[str, str], Json] = {}  # (type id, id) -> attributes
            # (person key, object type id, object id) -> relationship attributes
            self.relationships: dict[tuple[str, str, str], Json] = {}
            self.segments: dict[int, set[str]] = defaultdict(set)  # id -> person keys
            self.messages: list[Json] = []  # transactional messages (App API), as sent
            self.attribute_times: dict[str, dict[str, float]] = {}
            self.devices: dict[str, dict[str, Json]] = defaultdict(dict)
            self.suppressed: set[str] = set()
            self.events: list[Json] = []
            self.merges: list[tuple[str, str]] = []
            self.event_ids: set[str] = set()
            self.duplicate_event_ids = 0
            self.requests: deque[Json] = deque(maxlen=self.request_log_size)
            self.statuses: Counter[int] = Counter()
            self.per_second: Counter[int] = Counter()
            self.ops: Counter[str] = Counter()
            self.ops_per_request: Counter[int] = Counter()
            self.started = time.time()

    def record_request(
        self, method: str, path: str, body: Any, status: int, ops: int, size: int
    ) -> None:
        if size > self.logged_body_bytes:
            body = {"omitted_bytes": size}
        with self.lock:
            now = time.time()
            self.requests.append({"method": method, "path": path, "body": body,
                                  "status": status, "at": now})
            self.statuses[status] += 1
            self.per_second[int(now)] += 1
            if ops:
                self.ops_per_request[ops] += 1

    def apply(self, op: Json) -> None:
        """Apply one valid v2-form op."""
        action = op["action"]
        with self.lock:
            if op["type"] != "person":
                self.ops[f"{op['type']}_{action}"] += 1
                return self._apply_other(op)
            self.ops[action] += 1
            if action == "merge":
                primary = self.person(op["primary"], create=True)
                secondary = self.person(op["secondary"], create=False) or ""
                if primary is None:  # an unknown cio_id: no one to merge into
                    return
                # The primary's own attributes win; the secondary fills the gaps, then goes.
                merged = {**self.people.pop(secondary, {}), **self.people.get(primary, {})}
                self.attribute_times.pop(secondary, None)
                self.people[primary] = merged
                self.merges.append((primary, secondary))
                return
            person: Any = (self.person(op["identifiers"], create=action == "identify")
                           if "identifiers" in op else None)
            if person is None and "identifiers" in op:
                if action not in ("event", "page", "screen"):
                    return  # no one to delete, suppress or give a device
                person = "{}:{}".format(*next(iter(op["identifiers"].items())))
            if action == "identify":
                self.identify_op(person, op)
            elif action in ("event", "page", "screen"):
                self._add_event(op, person)
            elif action in ("delete", "suppress"):
                self.people.pop(person, None)
                self.attribute_times.pop(person, None)
                self.devices.pop(person, None)
                if action == "suppress":
                    self.suppressed.add(person)
            elif action == "unsuppress":
                self.suppressed.discard(person)
            elif action == "add_device":
                self.devices[person][op["device"]["token"]] = op["device"]
            elif action == "delete_device":
                self.devices[person].pop(op["device"]["token"], None)
            elif action in ("add_relationships", "delete_relationships"):
                for relationship in op["cio_relationships"]:
                    end = relationship["identifiers"]
                    self._relate(action, person, end["object_type_id"], end["object_id"],
                                 relationship.get("relationship_attributes", {}))

    def _apply_other(self, op: Json) -> None:
        """Objects, their relationships, and manual segments (the fake's own item form)."""
        action = op["action"]
        if op["type"] == "segment":
            people = [self.person({op["id_type"]: value}, create=False) for value in op["ids"]]
            segment = self.segments[int(op["segment_id"])]
            for person in filter(None, people):
                (segment.add if action == "add_customers" else segment.discard)(person)
            return
        key = (op["identifiers"]["object_type_id"], op["identifiers"]["object_id"])
        if action == "identify":
            self.objects.setdefault(key, {}).update(op.get("attributes", {}))
        elif action == "delete":
            self.objects.pop(key, None)
            for relationship in [r for r in self.relationships if r[1:] == key]:
                del self.relationships[relationship]
        else:
            for relationship in op["cio_relationships"]:
                related = self.person(relationship["identifiers"], create=False)
                if related is not None:
                    self._relate(action, related, *key,
                                 relationship.get("relationship_attributes", {}))

    def _relate(self, action: str, person: str, type_id: str, object_id: str,
                attributes: Json) -> None:
        if action == "add_relationships":
            self.relationships[(person, type_id, object_id)] = attributes
        else:
            self.relationships.pop((person, type_id, object_id), None)

    def person(self, identifiers: Json, create: bool) -> str | None:
        """The key of the person ``identifiers`` names, made if ``create`` (None: no one)."""
        (kind, value), = identifiers.items()
        if kind == "cio_id":
            return self.cio_ids.get(value)
        key = self.emails.get(value) if kind == "email" else value
        if key is None and create:
            key = f"email:{value}"
            self.emails[value] = key
        if key is not None and create and key not in self.people:
            self.people[key] = {"email": value} if kind == "email" else {}
            self.cio_ids[f"{len(self.cio_ids) + 1:012x}"] = key
        return key

    def cio_id(self, key: str) -> str | None:
        """The cio_id the fake gave person ``key``."""
        with self.lock:
            return next((cio for cio, known in self.cio_ids.items() if known == key), None)

    def identify_op(self, person: str, op: Json) -> None:
        """Update attributes, each unless it was set by a newer identify (``timestamp``
        orders attribute updates; one without a timestamp counts as made now)."""
        when = op.get("timestamp", time.time())
        times = self.attribute_times.setdefault(person, {})
        attributes = self.people.setdefault(person, {})
        for name, value in op.get("attributes", {}).items():
            if when >= times.get(name, 0):
                attributes[name], times[name] = value, when
                if name == "email" and isinstance(value, str):
                    self.emails[value] = person

    def _add_event(self, op: Json, person: str | None) -> None:
        event_id = op.get("id")
        if event_id in self.event_ids:
            # Customer.io drops an event whose id it has seen: count it, keep one copy.
            self.duplicate_event_ids += 1
            return
        if event_id:
            self.event_ids.add(event_id)
        self.events.append({
            "person": person, "anonymous_id": op.get("anonymous_id"), "type": op["action"],
            "name": op["name"], "id": event_id, "timestamp": op.get("timestamp"),
            "data": op.get("attributes", {}), "received_at": time.time(),
        })

    def stats(self) -> Json:
        with self.lock:
            return {
                "requests": sum(self.statuses.values()),
                "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
                "rate_limited": self.statuses[429],
                "max_requests_per_second": max(self.per_second.values(), default=0),
                "per_second": {str(second): n for second, n in sorted(self.per_second.items())},
                "ops": dict(self.ops),
                "ops_total": sum(self.ops.values()),
                "ops_per_request": {str(n): c for n, c in sorted(self.ops_per_request.items())},
                "people": len(self.people),
                "events": len(self.events),
                "duplicate_event_ids": self.duplicate_event_ids,
                "suppressed": len(self.suppressed),
                "merges": len(self.merges),
            }
