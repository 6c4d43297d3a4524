"""Packing ops into requests up to the Track API's byte limits."""

import pytest

from django_cio.client import encode_batch
from django_cio.exceptions import ValidationError
from django_cio.operations import (
    MAX_BATCH_BYTES,
    MAX_V2_OP_BYTES,
    AnonymousEvent,
    Event,
    Identify,
)
from django_cio.packing import pack


def big_identify(person, size):
    """An identify whose v2 item is exactly ``size`` bytes (values are at most 1000 bytes)."""
    attributes = {}
    while len(Identify(person, attributes).v2_bytes) < size:
        attributes[f"k{len(attributes):03}"] = "x" * 1000
    last = f"k{len(attributes) - 1:03}"
    over = len(Identify(person, attributes).v2_bytes) - size
    attributes[last] = "x" * (1000 - over)
    op = Identify(person, attributes)
    assert len(op.v2_bytes) == size
    return op


def test_ops_fill_batches_up_to_500_kb_exactly():
    ops = [big_identify(f"p{n}", 30_000) for n in range(40)]
    requests = list(pack(ops))
    assert [len(request.ops) for request in requests] == [16, 16, 8]
    assert all(len(encode_batch(request.ops)) <= MAX_BATCH_BYTES for request in requests)
    with pytest.raises(ValidationError, match="500000"):  # one more op would not have fitted
        encode_batch([*requests[0].ops, requests[1].ops[0]])


def test_a_batch_can_be_filled_to_the_byte():
    ops = [big_identify(f"p{n}", 31_250) for n in range(15)]
    room = MAX_BATCH_BYTES - len(encode_batch(ops)) - 1  # a comma before the last item
    ops.append(big_identify("last", room))
    (request,) = pack(ops)
    assert len(encode_batch(request.ops)) == MAX_BATCH_BYTES


def test_an_item_over_32_kb_goes_alone_by_v1_and_order_is_kept():
    fits = big_identify("a", MAX_V2_OP_BYTES)
    too_big = big_identify("b", MAX_V2_OP_BYTES + 1)
    assert fits.fits_v2() and not too_big.fits_v2()
    requests = list(pack([fits, too_big, Event("a", "e", {})]))
    assert [(request.batch, [op.person_id for op in request.ops]) for request in requests] == [
        (True, ["a"]), (False, ["b"]), (True, ["a"])
    ]


def test_anonymous_events_and_batch_off_use_v1():
    ops = [Identify("a", {}), AnonymousEvent("v", "seen", {})]
    assert [request.batch for request in pack(ops)] == [True, False]
    assert [request.batch for request in pack(ops, batch=False)] == [False, False]
