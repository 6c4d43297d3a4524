"""Fewer, fuller requests: consecutive identifies of a person merged, and ops packed into v2
batches of up to 500 KB."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .exceptions import ValidationError
from .operations import MAX_BATCH_BYTES, Identify, Operation

# The attribute that merges a visitor's anonymous history into a person: never merged away.
ANONYMOUS_ID = "anonymous_id"

_ENVELOPE_BYTES = len(b'{"batch":[]}')


@dataclass(frozen=True)
class Request:
    """The ops of one HTTP request: a v2 batch, or a single op sent with v1."""

    ops: tuple[Operation, ...]
    batch: bool


def pack(ops: Sequence[Operation], batch: bool = True) -> Iterator[Request]:
    """Requests carrying ``ops`` in their order: v2 batches of up to 500 KB where ``batch`` is
    set and the op fits v2; anonymous events and items over 32 KB go alone, with v1."""
    group: list[Operation] = []
    size = _ENVELOPE_BYTES
    for op in ops:
        if not (batch and op.fits_v2()):
            if group:  # keep the order: an identify must land before the event that needs it
                yield Request(tuple(group), batch=True)
                group, size = [], _ENVELOPE_BYTES
            yield Request((op,), batch=False)
            continue
        op_size = len(op.v2_bytes) + (1 if group else 0)  # and a comma after the first
        if group and size + op_size > MAX_BATCH_BYTES:
            yield Request(tuple(group), batch=True)
            group, size, op_size = [], _ENVELOPE_BYTES, len(op.v2_bytes)
        group.append(op)
        size += op_size
    if group:
        yield Request(tuple(group), batch=True)


def collapse(ops: Sequence[Operation]) -> list[Operation]:
    """Merge consecutive identifies of one person (none of that person's other ops between
    them) into the first, so each person's ops keep their order. Identifies that cannot be
    one (see ``_merged``) are both kept."""
    result: list[Operation] = []
    open_identify: dict[str, int] = {}  # person -> index in result of their latest identify
    visitor_events: dict[str, int] = {}  # anonymous id -> index in result of its last event
    by_other: set[str] = set()  # open identifies naming their person by email or cio_id
    for op in ops:
        if isinstance(op, Identify) and op.person in open_identify:
            index = open_identify[op.person]
            earlier = result[index]
            assert isinstance(earlier, Identify)
            merged = _merged(earlier, op, visitor_events, index)
            if merged is not None:
                result[index] = merged
                continue
        for person in op.people:
            open_identify.pop(person, None)
        # One person may be named by id in one op and by email in another: an op naming
        # people otherwise than by id closes every open identify, and one by id those that do.
        if op.id_types != {"id"}:
            open_identify.clear()
        elif by_other:
            for person in by_other:
                open_identify.pop(person, None)
            by_other.clear()
        if isinstance(op, Identify):
            open_identify[op.person] = len(result)
            if op.id_type != "id":
                by_other.add(op.person)
        elif op.kind == "anonymous_event":
            visitor_events[op.person_id] = len(result)
        result.append(op)
    return result


def _merged(earlier: Identify, later: Identify, visitor_events: dict[str, int],
            index: int) -> Identify | None:
    """One identify doing what ``earlier`` then ``later`` do, or None. Not when they carry
    different anonymous ids (each login merges its own visitor), nor when ``later``'s visitor
    has an event between them (the merge would land before it); one timestamp must fit all
    attributes: equal times, or the newer identify sets every attribute the older one does."""
    first, second = earlier.attributes.get(ANONYMOUS_ID), later.attributes.get(ANONYMOUS_ID)
    if first is not None and second is not None and first != second:
        return None
    if second is not None and visitor_events.get(second, -1) > index:
        return None
    if earlier.timestamp == later.timestamp:
        newer, attributes = later, {**earlier.attributes, **later.attributes}
    elif earlier.timestamp is None or later.timestamp is None:
        return None  # an unknown time cannot be ordered against a known one
    else:
        older, newer = sorted((earlier, later), key=lambda op: op.timestamp or 0)
        if not older.attributes.keys() <= newer.attributes.keys():
            return None  # the older one's own attributes would be sent as newer
        attributes = dict(newer.attributes)
    try:
        return Identify(later.person_id, attributes, timestamp=newer.timestamp,
                        workspace=later.workspace, id_type=later.id_type)
    except ValidationError:  # together they break a limit: send both
        return None
