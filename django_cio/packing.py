"""Fewer, fuller requests: ops packed into v2 batches of up to 500 KB."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .operations import MAX_BATCH_BYTES, Operation

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
