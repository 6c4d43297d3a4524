"""Packing ops into requests, and coalescing messages across a worker's threads."""

import threading
import time

import pytest

from django_cio.batching import Coalescer, Message, pack
from django_cio.client import encode_batch
from django_cio.exceptions import ValidationError
from django_cio.operations import (
    MAX_BATCH_BYTES,
    MAX_V2_OP_BYTES,
    AnonymousEvent,
    Event,
    Identify,
)


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


def run_threads(coalescer, count, ops_each=1):
    messages = [Message([{"n": n}] * ops_each) for n in range(count)]
    errors = []

    def task(message):
        try:
            coalescer.submit(message)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=task, args=(message,)) for message in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a task never returned"
    return messages, errors


def test_concurrent_messages_share_batches_and_every_task_returns_after_delivery():
    batches, senders, most = [], [0], [0]
    lock = threading.Lock()

    def take_slot():
        with lock:
            senders[0] += 1
            most[0] = max(most[0], senders[0])
        time.sleep(0.05)  # the limiter's wait: more messages arrive meanwhile

    def deliver(batch, throttled_for):
        assert all(not message.done for message in batch)
        batches.append(len(batch))
        time.sleep(0.05)  # the HTTP request
        with lock:
            senders[0] -= 1

    coalescer = Coalescer(deliver, take_slot, max_senders=3)
    messages, errors = run_threads(coalescer, 200)
    assert errors == [] and all(message.done for message in messages)
    assert sum(batches) == 200
    assert len(batches) < 60  # shared: far fewer deliveries than messages
    assert most[0] <= 3


def test_a_batch_is_capped_by_op_count():
    batches = []
    coalescer = Coalescer(lambda batch, _: batches.append(sum(len(m.ops) for m in batch)),
                          lambda: time.sleep(0.02), max_senders=1, max_ops=10)
    run_threads(coalescer, 50, ops_each=3)
    assert max(batches) <= 10 and sum(batches) == 150


def test_a_failed_delivery_raises_in_each_of_its_tasks():
    def deliver(batch, throttled_for):
        for message in batch:
            message.error = RuntimeError("requeue me")

    _, errors = run_threads(Coalescer(deliver, lambda: None), 20)
    assert len(errors) == 20


def test_a_crashing_deliver_function_still_frees_every_task():
    def deliver(batch, throttled_for):
        raise RuntimeError("bug")

    coalescer = Coalescer(deliver, lambda: None, max_senders=2)
    messages, errors = run_threads(coalescer, 30)
    assert all(message.done for message in messages)
    assert errors  # leaders saw the bug
    assert coalescer._senders == 0  # no lead lost


@pytest.mark.parametrize("senders", [1, 4])
def test_no_lead_is_lost_under_churn(senders):
    coalescer = Coalescer(lambda batch, _: time.sleep(0.001), lambda: None, max_senders=senders)
    for _ in range(5):
        run_threads(coalescer, 100)
    assert coalescer._senders == 0
