"""Fewer, fuller requests: the ``deliver`` messages waiting in the queue, taken straight from
the broker to be delivered together with a task's own, and settled after (the broker's own
ways in ``amqp`` and ``redis``)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import kombu

from . import amqp, redis
from .messages import Message, Taking


def drain(queue: str, max_messages: int, max_ops: int) -> list[Message]:
    """Take up to ``max_messages`` waiting ``deliver`` messages (``max_ops`` ops) straight
    from the broker, unacknowledged, to be delivered with the running task's own message.

    Going around Celery's per-task machinery is what lets a worker process coalesce thousands
    of one-op messages a second. The broker still holds each one until ``settle``: a worker
    killed meanwhile loses nothing. A message this cannot run now (another task, a retry whose
    countdown has not passed, one back from a lost worker) is handed back and the drain stops.
    """
    taking = Taking(queue_binding(queue), max_messages, max_ops)
    try:
        (redis if redis.on_redis(taking.bound.channel) else amqp).drain(taking)
        for message in taking.messages:
            message.queue = queue
    except Exception:
        # What was taken and not acknowledged returns to the queue with the connection: none
        # of it is ours to deliver now (delivered too, it would arrive twice).
        reconnect()
        raise
    return taking.messages


def settle(messages: Sequence[Message]) -> None:
    """Acknowledge drained messages whose ops are safe; hand the others back."""
    queued = [message for message in messages if message.queued is not None]
    try:
        for message in queued:  # first: an AMQP ack of many covers every earlier tag
            if message.error is not None:
                _requeue(message)
        done = [message.queued for message in queued if message.error is None]
        if done:
            (redis if redis.on_redis(done[0].channel) else amqp).ack(done)
    except Exception:  # the broker will redeliver them; their event ids make that harmless
        reconnect()


def _requeue(message: Message) -> None:
    """Return a message whose ops could not be handled, marked as back from a failure."""
    queued = message.queued
    if redis.on_redis(queued.channel):
        # One MULTI/EXEC moving it from unacked to the queue, marked redelivered; Redis has
        # no delivery limit.
        queued.reject(requeue=True)
    else:
        amqp.republish(queued, str(message.queue), mark=True)


_local = threading.local()


def queue_binding(name: str) -> Any:
    """This thread's binding of queue ``name`` on its own connection to the app's broker (one
    connection per thread, whichever workspaces' queues a worker drains)."""
    from celery import current_app

    broker = current_app.conf.broker_url
    if getattr(_local, "pid", None) != os.getpid() or _local.broker != broker:
        if getattr(_local, "pid", None) == os.getpid():
            reconnect()  # the app moved to another broker (a forked child never closes)
        _local.connection = current_app.connection_for_read()
        _local.pid, _local.broker, _local.bindings = os.getpid(), broker, {}
    if name not in _local.bindings:
        _local.bindings[name] = kombu.Queue(name, no_declare=True)(
            _local.connection.default_channel)
    return _local.bindings[name]


def reconnect() -> None:
    """Drop this thread's drain connection (closing it returns its unacknowledged messages)."""
    connection = getattr(_local, "connection", None)
    _local.pid = _local.connection = None
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()
