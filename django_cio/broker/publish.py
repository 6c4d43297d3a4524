"""Messages onto the broker: ``deliver`` messages of ops, and tasks by name, each one
confirmed by the broker (RabbitMQ publisher confirms; Redis: written) within a short timeout."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from celery import current_app

from ..conf import DEFAULT_WORKSPACE, get_settings
from ..operations import Json, dumps
from ..routing import by_workspace, one_workspace

# The task that delivers ops (``django_cio.tasks.deliver``), and the task that continues an
# ``--async`` backfill. By name: messages already queued must keep running.
DELIVER = "django_cio.tasks.deliver"
BACKFILL_PAGE = "django_cio.tasks.backfill_page"
# A message above this is split: brokers and Celery handle small messages best, and one
# message per transaction should not grow without bound in a bulk job.
MAX_MESSAGE_BYTES = 256 * 1024
# Seconds the request may spend reaching the broker before it gives up and writes the Outbox.
PUBLISH_TIMEOUT = 1.0

_local = threading.local()


def split(ops: Sequence[Json], limit: int = MAX_MESSAGE_BYTES) -> Iterator[list[Json]]:
    """Group op dicts into messages of one workspace's ops, each at most ``limit`` encoded
    bytes (one op may exceed it)."""
    for group in by_workspace(ops).values():
        chunk: list[Json] = []
        size = 0
        for op in group:
            op_size = len(dumps(op)) + 1
            if chunk and size + op_size > limit:
                yield chunk
                chunk, size = [], 0
            chunk.append(op)
            size += op_size
        if chunk:
            yield chunk


def publish_ops(ops: list[Json], *, failures: int = 0, countdown: float = 0) -> None:
    """One ``deliver`` message on this thread's broker connection. Raises on broker errors."""
    publish_task(
        DELIVER, (ops,), workspace=one_workspace(ops),
        kwargs={"failures": failures} if failures else None,
        countdown=countdown or None,
        # Celery copies the arguments' repr into headers, events and Flower: no values.
        argsrepr=f"[<{len(ops)} ops>]", kwargsrepr=f"{{'failures': {failures}}}",
    )


def publish_task(name: str, args: tuple[Any, ...], workspace: str = DEFAULT_WORKSPACE,
                 **options: Any) -> None:
    """Task ``name`` on ``workspace``'s queue, by this thread's broker connection (by name: this
    layer imports no task module); returns once the broker has it (RabbitMQ: confirmed;
    Redis: written). Short timeouts and no retry loop: a caller that cannot wait has a
    fallback. Raises on broker errors."""
    for attempt in (1, 2):
        fresh = getattr(_local, "producer", None) is None or _local.pid != os.getpid()
        try:
            current_app.send_task(name, args, queue=get_settings(workspace).queue,
                                  producer=producer(), ignore_result=True, retry=False,
                                  timeout=PUBLISH_TIMEOUT, confirm_timeout=PUBLISH_TIMEOUT,
                                  **options)
            return
        except Exception:
            drop_producer()
            # A connection that sat idle may have been dropped on the way (a NAT, a load
            # balancer): one more try on a new one, but never twice on a new one.
            if fresh or attempt == 2:
                raise


def producer() -> Any:
    """This thread's kombu producer, on a connection with short timeouts (made once)."""
    if getattr(_local, "pid", None) != os.getpid() or _local.producer is None:
        app = current_app
        connection = app.connection_for_write(
            connect_timeout=PUBLISH_TIMEOUT,
            # No heartbeats: nothing in a web process would send them, and the broker would
            # close the connection between requests. A dead link shows at the next publish.
            heartbeat=0,
            transport_options={
                # Redis: bound each socket call.
                "socket_timeout": PUBLISH_TIMEOUT,
                "socket_connect_timeout": PUBLISH_TIMEOUT,
                "max_retries": 0,
                # RabbitMQ: a publish counts once the broker confirms it (publisher confirms);
                # a link that went dark without a FIN fails within the timeout instead of
                # swallowing messages into a socket buffer.
                "confirm_publish": True,
                "read_timeout": PUBLISH_TIMEOUT,
                "write_timeout": PUBLISH_TIMEOUT,
            },
        )
        _local.pid, _local.producer = os.getpid(), app.amqp.Producer(connection)
    return _local.producer


def drop_producer() -> None:
    """Forget this thread's producer (after an error, or when the app's broker changed)."""
    dropped = getattr(_local, "producer", None)
    _local.producer = None
    if dropped is not None:
        with contextlib.suppress(Exception):
            # Without a goodbye to the broker: on a dead link that would wait for an answer.
            dropped.connection.collect()
