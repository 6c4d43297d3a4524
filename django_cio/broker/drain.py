"""Fewer, fuller requests: the ``deliver`` messages waiting in the queue, taken straight from
the broker to be delivered together with a task's own, and settled after."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import kombu
from amqp import spec
from kombu.serialization import prepare_accept_content
from kombu.transport import virtual

from ..operations import Json
from . import redis as broker_redis

# Above any MAX_RETRIES, and below what DeadLetter.attempts (a 32-bit column) holds.
MAX_FAILURES = 2**31 - 2


@dataclass(eq=False)
class Message:
    """A ``deliver`` message: the task's own, or one drained straight from the queue."""

    ops: list[Json]
    failures: int = 0
    error: BaseException | None = None  # set when its ops must go back to the broker
    queued: Any = None  # the kombu message, for drained ones (to acknowledge it)

    @classmethod
    def of(cls, ops: Any, failures: Any, queued: Any = None) -> Message:
        """A message from a task's arguments, however malformed (each bad op becomes a dead
        letter later; a bad failure count counts as none)."""
        if not isinstance(ops, list):
            ops = [ops]
        if (not isinstance(failures, int) or isinstance(failures, bool)
                or not 0 <= failures < MAX_FAILURES):
            failures = 0
        return cls(ops, failures, queued=queued)


# The header marking a copy of a redelivered message that a drain handed back: ``deliver``
# still runs it alone and counts it toward its poison limit (see ``redelivered``).
REDELIVERED_HEADER = "cio_redelivered"
# Most seconds a drain waits for RabbitMQ to confirm a handed-back copy.
CONFIRM_TIMEOUT = 10
# Messages a Redis drain takes in its first step, before it knows their size in ops.
_FIRST_TAKE = 10
# Most ``basic.get`` requests a RabbitMQ drain keeps in flight: enough to hide the round trip,
# few enough that a message larger than any taken before it leaves few taken past max_ops.
_WINDOW = 32


def redelivered(request: Any) -> bool:
    """Whether a task's message came back from a lost worker: redelivered by the broker, or
    a copy a drain handed back (RabbitMQ cannot mark a published copy redelivered)."""
    info = getattr(request, "delivery_info", None) or {}
    return bool(info.get("redelivered") or getattr(request, REDELIVERED_HEADER, False))


def _came_back(queued: Any) -> bool:
    """Whether a kombu message is back from a lost worker (``redelivered`` for kombu's)."""
    return bool((queued.delivery_info or {}).get("redelivered")
                or (queued.headers or {}).get(REDELIVERED_HEADER))


def drain(queue: str, max_messages: int, max_ops: int) -> list[Message]:
    """Take up to ``max_messages`` waiting ``deliver`` messages (``max_ops`` ops) straight
    from the broker, unacknowledged, to be delivered with the running task's own message.

    Going around Celery's per-task machinery is what lets a worker process coalesce thousands
    of one-op messages a second. The broker still holds each one until ``settle``: a worker
    killed meanwhile loses nothing. A message this cannot run now (another task, a retry whose
    countdown has not passed, one back from a lost worker) is handed back and the drain stops.
    """
    taking = _Drain(_queue(queue), max_messages, max_ops)
    try:
        if _on_redis(taking.bound.channel):
            while not taking.full() and taking.keep(_redis_take(taking.bound,
                                                                taking.next_take())):
                pass
        else:
            _amqp_drain(taking)
    except Exception:
        # What was taken and not acknowledged returns to the queue with the connection: none
        # of it is ours to deliver now (delivered too, it would arrive twice).
        _reconnect()
        raise
    return taking.messages


@dataclass
class _Drain:
    bound: Any
    max_messages: int
    max_ops: int
    messages: list[Message] = field(default_factory=list)
    ops: int = 0

    def full(self) -> bool:
        return len(self.messages) >= self.max_messages or self.ops >= self.max_ops

    def next_take(self) -> int:
        """How many to take next: as many as the ops seen so far say will fit."""
        room = self.max_messages - len(self.messages)
        if not self.messages:
            return min(room, _FIRST_TAKE)
        per_message = -(-self.ops // len(self.messages))
        return max(1, min(room, (self.max_ops - self.ops) // max(per_message, 1)))

    def keep(self, taken: list[Any]) -> bool:
        """Keep what fits of ``taken``; False when the drain must stop."""
        more = bool(taken)
        for index, queued in enumerate(taken):
            if self.full():  # more than fits: back to the head of the queue, unchanged
                _give_back(self.bound, taken[index:], front=True)
                return False
            message = None if _came_back(queued) else _as_message(queued)
            if message is None:
                # Back from a lost worker, Celery runs it alone (a poison message is counted
                # and dead-lettered alone); a retry must wait for its countdown.
                _hand_back(self.bound, queued)
                more = False
                continue
            self.messages.append(message)
            self.ops += len(message.ops)
        return more


def settle(messages: Sequence[Message]) -> None:
    """Acknowledge drained messages whose ops are safe; hand the others back."""
    queued = [message for message in messages if message.queued is not None]
    try:
        for message in queued:  # first: an AMQP ack of many covers every earlier tag
            if message.error is not None:
                _requeue(message.queued)
        _ack([message.queued for message in queued if message.error is None])
    except Exception:  # the broker will redeliver them; their event ids make that harmless
        _reconnect()


def _as_message(queued: Any) -> Message | None:
    """The ``deliver`` message in a Celery (protocol 2) message, unless it must wait."""
    headers = queued.headers or {}
    if headers.get("task") != "django_cio.tasks.deliver" or headers.get("eta"):
        return None
    try:
        (ops, *_), kwargs, _ = queued.decode()
    except Exception:  # not JSON, not protocol 2: Celery's own handling deals with it
        return None
    failures = kwargs.get("failures", 0) if isinstance(kwargs, dict) else 0
    return Message.of(ops, failures, queued)


def _amqp_drain(taking: _Drain) -> None:
    """The drain on RabbitMQ: ``basic.get`` requests pipelined on the drain's channel.

    Each ``basic.get`` is atomic on the broker (the message it answers with is recorded
    unacknowledged on this channel as it is taken, and returns to the queue when the
    connection closes), and a channel answers its requests in order: keeping up to
    ``_WINDOW`` of them in flight takes many messages per round trip with no consumer, no
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
                fits = min(_FIRST_TAKE, taking.max_ops - taking.ops)
            wanted = min(_WINDOW, room, fits, _WINDOW if waiting is None else waiting)
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
        message = None if _came_back(queued) else _as_message(queued)
        if message is None:  # as ``_Drain.keep``: handed back, and the drain stops
            back.append(queued)
            stop = True
            continue
        taking.messages.append(message)
        taking.ops += len(message.ops)
        largest = max(largest, len(message.ops))
        stop = stop or taking.full()
    for queued in back:
        _hand_back(taking.bound, queued)


def _hand_back(bound: Any, queued: Any) -> None:
    """Return a message to the back of the queue without rejecting it (a reject raises a
    quorum queue's delivery count, and the broker drops the message at its limit)."""
    if _on_redis(bound.channel):
        _give_back(bound, [queued], front=False)  # as it was, its redelivered flag included
    else:
        _republish(queued, bound.name, mark=_came_back(queued))


def _requeue(queued: Any) -> None:
    """Return a message whose ops could not be handled, marked as back from a failure."""
    if _on_redis(queued.channel):
        # One MULTI/EXEC moving it from unacked to the queue, marked redelivered; Redis has
        # no delivery limit.
        queued.reject(requeue=True)
    else:
        _republish(queued, _local.name, mark=True)


def _republish(queued: Any, queue: str, mark: bool) -> None:
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


def _ack(done: list[Any]) -> None:
    if done and _on_redis(done[0].channel):
        _redis_ack(done[0].channel, done)
        return
    if done:
        # One ack for all: every message taken on the drain's channel is settled by now (the
        # failed ones handed back, each acknowledged on its own), so "up to this tag" is exact.
        last = max(done, key=lambda queued: queued.delivery_tag)
        last.channel.basic_ack(last.delivery_tag, multiple=True)
        for queued in done:
            queued._state = "ACK"


_local = threading.local()


def _queue(name: str) -> Any:
    """This thread's queue binding on its own broker connection (made once)."""
    if getattr(_local, "pid", None) != os.getpid() or getattr(_local, "name", None) != name:
        from celery import current_app

        _local.connection = current_app.connection_for_read()
        _local.pid, _local.name = os.getpid(), name
        _local.queue = kombu.Queue(name, no_declare=True)(_local.connection.default_channel)
    return _local.queue


def _reconnect() -> None:
    """Drop this thread's drain connection (closing it returns its unacknowledged messages)."""
    connection = getattr(_local, "connection", None)
    _local.pid = _local.connection = None
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()


# Redis: ``broker.redis`` takes messages atomically; handing back is one script too.

# KEYS: unacked, unacked_index, the queue's lists. ARGV: LPUSH (to the back) or RPUSH (to the
# front), then (delivery tag, KEYS index of its list, payload) for each message. A message
# the visibility timeout already restored is not in ``unacked`` any more: left alone.
_GIVE_BACK = """
for i = 2, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call(ARGV[1], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
  end
end
"""


def _on_redis(channel: Any) -> bool:
    from kombu.transport import redis

    return isinstance(channel, redis.Channel)


def _redis_keys(channel: Any, queue: str) -> list[str]:
    """unacked, unacked_index and the queue's lists, as ``_GIVE_BACK`` takes them."""
    lists = broker_redis.queue_lists(channel, [queue])
    return broker_redis.prefixed(channel, [channel.unacked_key, channel.unacked_index_key, *lists])


def _redis_take(bound: Any, limit: int) -> list[Any]:
    """Up to ``limit`` messages, each recorded unacknowledged as it is taken (one script)."""
    channel = bound.channel
    return [_received(channel, item) for _, item in broker_redis.take(channel, [bound.name], limit)]


def _received(channel: Any, item: bytes) -> Any:
    """A taken message as ``basic_get`` makes it, already recorded unacknowledged."""
    message = channel.Message(json.loads(item), channel=channel)
    # kombu's in-memory record only: what a closing connection restores, what ack clears.
    virtual.QoS.append(channel.qos, message, message.delivery_tag)
    message.accept = prepare_accept_content(["json"])
    return message


def _give_back(bound: Any, taken: list[Any], front: bool) -> None:
    """Return taken messages to the queue unchanged, at its front (in their order) or back."""
    channel = bound.channel
    keys = _redis_keys(channel, bound.name)
    args: list[Any] = ["RPUSH" if front else "LPUSH"]
    for queued in reversed(taken) if front else taken:
        priority = channel._get_message_priority(queued._raw, reverse=False)
        list_key = (channel.global_keyprefix or "") + channel._q_for_pri(bound.name, priority)
        args += [queued.delivery_tag, keys.index(list_key) + 1, json.dumps(queued._raw)]
    with channel.conn_or_acquire() as client:
        client.eval(_GIVE_BACK, len(keys), *keys, *args)
    for queued in taken:
        _forget(queued)


def _redis_ack(channel: Any, done: list[Any]) -> None:
    """Acknowledge many messages in one round trip (kombu's ``ack`` takes one each)."""
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline()  # kombu's own client: it adds any global key prefix
        for queued in done:
            pipe.zrem(channel.unacked_index_key, queued.delivery_tag)
            pipe.hdel(channel.unacked_key, queued.delivery_tag)
        pipe.execute()
    for queued in done:
        _forget(queued)


def _forget(queued: Any) -> None:
    """Drop a message from kombu's in-memory record of the unacknowledged: it is settled."""
    virtual.QoS.ack(queued.channel.qos, queued.delivery_tag)
    queued._state = "ACK"
