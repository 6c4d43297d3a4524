"""From a validated op in the request to ONE broker message per transaction or batch.

``enqueue(op)`` puts the op where it belongs:

* inside a transaction (``atomic``), in a buffer that is published when it commits, as one
  message with every op the transaction made (a rolled-back savepoint drops its own ops);
* inside ``batch()``, in the batch, published when the block exits;
* otherwise, straight onto the broker.

Publishing never raises and never waits long for the broker: a failed publish writes the
message to the ``Outbox`` table of the same database, and ``relay_outbox`` sends it later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.utils import timezone

from .backends import backend_class
from .conf import get_settings
from .operations import Json, Operation, dumps

logger = logging.getLogger("django_cio")

# A message above this is split: brokers and Celery handle small messages best, and one
# message per transaction should not grow without bound in a bulk job.
MAX_MESSAGE_BYTES = 256 * 1024
# Seconds the request may spend reaching the broker before it gives up and writes the Outbox.
PUBLISH_TIMEOUT = 1.0

# Open batch() blocks, innermost last. A context variable, so that concurrent requests served
# by one thread (async views) keep their own. Transaction buffers follow DB connections, which
# belong to a thread.
_batch: ContextVar[tuple[list[Operation], ...]] = ContextVar("django_cio_batch", default=())
_local = threading.local()


# -- where an op goes ---------------------------------------------------------------------

def enqueue(op: Operation, using: str | None = None) -> None:
    """Queue a validated op: after the current transaction commits, or with the batch."""
    if not get_settings().enabled:
        return
    alias = using or _atomic_alias()
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block:
        _transaction_buffer(alias).add(op, connection)
    elif _batch.get():
        _batch.get()[-1].append(op)
    else:
        publish([op], alias)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Send every op made inside the block (and committed, if made in a transaction) as one
    message when the block exits. The middleware wraps each request in one."""
    ops: list[Operation] = []
    token = _batch.set((*_batch.get(), ops))
    try:
        yield
    finally:
        _batch.reset(token)
        if ops:
            _hand_on(ops, DEFAULT_DB_ALIAS)


def _atomic_alias() -> str:
    """The database whose transaction the op belongs to: the default one, else any open."""
    if transaction.get_connection(DEFAULT_DB_ALIAS).in_atomic_block:
        return DEFAULT_DB_ALIAS
    for alias in connections:
        if connections[alias].in_atomic_block:
            return alias
    return DEFAULT_DB_ALIAS


def _hand_on(ops: list[Operation], alias: str) -> None:
    """Committed ops join the enclosing batch if there is one, else go to the broker."""
    if _batch.get():
        _batch.get()[-1].extend(ops)
    else:
        publish(ops, alias)


# -- one transaction's ops ----------------------------------------------------------------

class _Step:
    """The ``on_commit`` callback of one op. Django drops it if its savepoint rolls back.

    Every step collects its op on commit; a step with ``flushes`` set then sends what was
    collected. A step stops flushing when a later one is registered at the same or an outer
    savepoint level: that one runs after it and is only ever dropped together with it, so the
    last step that runs always flushes, and a transaction's ops leave as one message.
    """

    __slots__ = ("alias", "buffer", "flushes", "op", "savepoints")

    def __init__(self, buffer: _TransactionBuffer, op: Operation, savepoints: frozenset[str]):
        self.buffer, self.op, self.savepoints = buffer, op, savepoints
        self.flushes = True

    def __call__(self) -> None:
        buffer = self.buffer
        buffer.committed.append(self.op)
        if self.flushes:
            ops, buffer.committed = buffer.committed, []
            _hand_on(ops, buffer.alias)


class _TransactionBuffer:
    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.committed: list[Operation] = []
        self.flushers: list[_Step] = []

    def add(self, op: Operation, connection: Any) -> None:
        savepoints = frozenset(sid for sid in connection.savepoint_ids if sid)
        for step in self.flushers:
            if savepoints <= step.savepoints:
                step.flushes = False
        step = _Step(self, op, savepoints)
        self.flushers = [*(s for s in self.flushers if s.flushes), step]
        # robust: should a step fail anyway, Django logs it and runs the app's other hooks.
        transaction.on_commit(step, using=self.alias, robust=True)


def _transaction_buffer(alias: str) -> _TransactionBuffer:
    buffers = _local.__dict__.setdefault("transactions", {})
    if alias not in buffers:
        buffers[alias] = _TransactionBuffer(alias)
    return buffers[alias]


# -- to the broker, or the Outbox -----------------------------------------------------------

def publish(ops: Sequence[Operation], using: str = DEFAULT_DB_ALIAS) -> None:
    """Send ops to the broker in as few messages as fit; never raises."""
    if backend_class().delivers_inline:
        from .tasks import Delivery

        Delivery([op.to_dict() for op in ops]).run()
        return
    for chunk in split([op.to_dict() for op in ops]):
        send_message(chunk, using=using)


def split(ops: Sequence[Json], limit: int = MAX_MESSAGE_BYTES) -> Iterator[list[Json]]:
    """Group op dicts into lists of at most ``limit`` encoded bytes (one op may exceed it)."""
    chunk: list[Json] = []
    size = 0
    for op in ops:
        op_size = len(dumps(op)) + 1
        if chunk and size + op_size > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += op_size
    if chunk:
        yield chunk


def send_message(
    ops: list[Json], *, failures: int = 0, delay: float = 0, using: str = DEFAULT_DB_ALIAS
) -> None:
    """Publish one ``deliver`` message; on any broker error, park it in the Outbox instead."""
    try:
        publish_to_broker(ops, failures=failures, countdown=delay)
    except Exception as exc:  # whatever the broker does, the caller must not see it
        logger.warning(
            "customerio: broker unavailable (%s); %d op(s) kept in the outbox",
            type(exc).__name__, len(ops),
        )
        park(ops, failures=failures, delay=delay, using=using)


def park(ops: list[Json], *, failures: int = 0, delay: float = 0,
         using: str = DEFAULT_DB_ALIAS) -> None:
    """Write a message to the Outbox, for ``relay_outbox`` to publish after ``delay`` s."""
    from .models import Outbox

    alias = using if router.allow_migrate_model(using, Outbox) else router.db_for_write(Outbox)
    try:
        Outbox.objects.using(alias).create(
            ops=ops, failures=failures, not_before=timezone.now() + timedelta(seconds=delay)
        )
    except Exception:
        logger.exception(
            "customerio: broker and outbox both unavailable; %d op(s) lost", len(ops)
        )


def publish_to_broker(ops: list[Json], *, failures: int = 0, countdown: float = 0) -> None:
    """One ``deliver`` message on this thread's broker connection. Raises on broker errors."""
    from .tasks import deliver

    producer = _producer()
    try:
        deliver.apply_async(
            args=(ops,), kwargs={"failures": failures} if failures else None,
            queue=get_settings().queue, countdown=countdown or None,
            producer=producer, retry=False,
        )
    except Exception:
        _drop_producer()
        raise


def _producer() -> Any:
    """This thread's kombu producer, on a connection with short timeouts (made once)."""
    if getattr(_local, "pid", None) != os.getpid() or _local.producer is None:
        from .tasks import deliver

        app = deliver.app
        connection = app.connection_for_write(
            connect_timeout=PUBLISH_TIMEOUT,
            transport_options={
                # Redis: bound each socket call; AMQP: bound connection setup.
                "socket_timeout": PUBLISH_TIMEOUT,
                "socket_connect_timeout": PUBLISH_TIMEOUT,
                "max_retries": 0,
            },
        )
        _local.pid, _local.producer = os.getpid(), app.amqp.Producer(connection)
    return _local.producer


def _drop_producer() -> None:
    producer = getattr(_local, "producer", None)
    _local.producer = None
    if producer is not None:
        with contextlib.suppress(Exception):
            producer.connection.close()
