"""Fewer, fuller requests: ops packed into v2 batches, and queued messages drained together."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import kombu

from .operations import MAX_BATCH_BYTES, Json, Operation

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


def drain(queue: str, max_messages: int, max_ops: int) -> list[Message]:
    """Take up to ``max_messages`` waiting ``deliver`` messages (``max_ops`` ops) straight
    from the broker, unacknowledged, to be delivered with the running task's own message.

    Going around Celery's per-task machinery is what lets a worker process coalesce thousands
    of one-op messages a second. The broker still holds each one until ``settle``: a worker
    killed meanwhile loses nothing. A message this cannot run now (another task, a retry whose
    countdown has not passed) is handed back, published again unchanged, and the drain stops.
    """
    bound = _queue(queue)
    drained: list[Message] = []
    count = 0
    try:
        while len(drained) < max_messages and count < max_ops:
            queued = bound.get(no_ack=False, accept={"json"})
            if queued is None:
                break
            if queued.delivery_info.get("redelivered"):
                # Back from a lost worker: Celery runs it alone, so that a poison message is
                # counted (and dead-lettered) alone, not with every batch it was drained into.
                queued.reject(requeue=True)
                break
            message = _as_message(queued)
            if message is None:
                _hand_back(bound, queued)
                break
            drained.append(message)
            count += len(message.ops)
    except Exception:
        # What was taken and not acknowledged returns to the queue with the connection: none
        # of it is ours to deliver now (delivered too, it would arrive twice).
        _reconnect()
        raise
    return drained


def settle(messages: Sequence[Message]) -> None:
    """Acknowledge drained messages whose ops are safe; requeue the others."""
    for message in messages:
        if message.queued is None:
            continue
        try:
            if message.error is None:
                message.queued.ack()
            else:
                message.queued.reject(requeue=True)
        except Exception:  # the broker will redeliver it; its event ids make that harmless
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


def _hand_back(bound: Any, queued: Any) -> None:
    """Publish a message again as it was, then drop our copy (a reject would mark it
    redelivered, which counts against a poison message's deliveries)."""
    kombu.Producer(bound.channel).publish(
        queued.body, routing_key=bound.name, exchange="", headers=queued.headers,
        content_type=queued.content_type, content_encoding=queued.content_encoding,
        **{key: value for key, value in queued.properties.items()
           if key in ("correlation_id", "reply_to", "priority", "expiration")},
    )
    queued.ack()


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
