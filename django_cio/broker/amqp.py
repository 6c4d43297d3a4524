"""Draining on RabbitMQ: ``basic.get`` requests pipelined on the drain's channel, hand-backs as
confirmed copies (never a reject: a quorum queue counts those), and one ack for many."""

from __future__ import annotations

from typing import Any

from amqp import spec
from kombu.serialization import prepare_accept_content

from . import messages
from .messages import FIRST_TAKE, REDELIVERED_HEADER, Taking, came_back

# Most seconds a drain waits for RabbitMQ to confirm a handed-back copy.
CONFIRM_TIMEOUT = 10
# Most ``basic.get`` requests a drain keeps in flight: enough to hide the round trip, few
# enough that a message larger than any taken before it leaves few taken past max_ops.
WINDOW = 32


def drain(taking: Taking) -> None:
    """The drain on RabbitMQ: ``basic.get`` requests pipelined on the drain's channel.

    Each ``basic.get`` is atomic on the broker (the message it answers with is recorded
    unacknowledged on this channel as it is taken, and returns to the queue when the
    connection closes), and a channel answers its requests in order: keeping up to
    ``WINDOW`` of them in flight takes many messages per round trip with no consumer, no
    prefetch window and no cancel race, and with nothing delivered that was not asked for.

    No request is sent that could take a message past ``max_messages``, nor, as far as the
    largest message seen so far tells, past ``max_ops``; a larger one than that can still leave
    taken messages over ``max_ops``: those are handed back like the messages that cannot run
    now. Every answer is read before anything else is done on the channel (py-amqp drops an
    answer nobody waits for: its message would stay unacknowledged until the connection
    closes), so handing back waits until no request is in flight.
    """
    channel = taking.bound.channel
    accept = prepare_accept_content(["json"])
    waiting: int | None = None  # ready messages the broker counted behind the latest taken
    largest = 0  # most ops in one message taken so far
    in_flight = 0
    stop = False  # send no more requests
    back: list[Any] = []  # taken messages to hand back once nothing is in flight
    while True:
        if not stop:
            room = taking.max_messages - len(taking.messages)
            if largest:
                fits = max(1, (taking.max_ops - taking.ops) // largest)
            else:  # sizes unknown: as many as one-op messages would fit, at first
                fits = min(FIRST_TAKE, taking.max_ops - taking.ops)
            wanted = min(WINDOW, room, fits, WINDOW if waiting is None else waiting)
            for _ in range(wanted - in_flight):  # sent now, answered in order below
                channel.send_method(spec.Basic.Get, "Bsb", (0, taking.bound.name, False))
            in_flight = max(in_flight, wanted)
        if not in_flight:
            break
        answer = channel.wait([spec.Basic.GetOk, spec.Basic.GetEmpty], returns_tuple=True)
        in_flight -= 1
        if not answer or len(answer) < 2:  # get-empty: the queue was empty
            stop = True
            continue
        queued = channel.message_to_python(channel._on_get_ok(*answer))
        queued.accept = accept
        waiting = queued.delivery_info.get("message_count")
        if queued.errors:  # as kombu's ``Queue.get``: the drain fails, the messages return
            queued._reraise_error()
        if taking.full():  # taken past max_ops (a message larger than any before it)
            back.append(queued)
            stop = True
            continue
        message = None if came_back(queued) else messages.as_message(queued)
        if message is None:  # as ``_Drain.keep``: handed back, and the drain stops
            back.append(queued)
            stop = True
            continue
        taking.add(message)
        largest = max(largest, len(message.ops))
        stop = stop or taking.full()
    for queued in back:
        hand_back(taking.bound.name, queued)


def hand_back(queue: str, queued: Any) -> None:
    """Return a message to the back of the queue without rejecting it (a reject raises a
    quorum queue's delivery count, and the broker drops the message at its limit)."""
    republish(queued, queue, mark=came_back(queued))


def republish(queued: Any, queue: str, mark: bool) -> None:
    """Publish a copy of ``queued`` and acknowledge it once RabbitMQ confirmed the copy
    (unconfirmed, it stays unacknowledged and returns to the queue with the connection)."""
    headers = dict(queued.headers or {})
    if mark:
        headers[REDELIVERED_HEADER] = True
    properties = {key: value for key, value in queued.properties.items()
                  if key in ("correlation_id", "reply_to", "expiration", "delivery_mode")}
    properties.setdefault("delivery_mode", 2)  # persistent, as Celery published it
    channel = queued.channel
    copy = channel.prepare_message(
        queued.body, queued.properties.get("priority"), queued.content_type,
        queued.content_encoding, headers, properties)
    # mandatory: a copy no queue took comes back as an error, not as a confirmation
    channel.basic_publish_confirm(copy, exchange="", routing_key=queue, mandatory=True,
                                  confirm_timeout=CONFIRM_TIMEOUT)
    queued.ack()


def ack(done: list[Any]) -> None:
    """One ack for all: every message taken on the drain's channel is settled by then (the
    failed ones handed back, each acknowledged on its own), so "up to this tag" is exact."""
    last = max(done, key=lambda queued: queued.delivery_tag)
    last.channel.basic_ack(last.delivery_tag, multiple=True)
    for queued in done:
        queued._state = "ACK"
