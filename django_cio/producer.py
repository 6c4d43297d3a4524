"""From a validated op in the request to ONE broker message per transaction or batch.

``enqueue(op)`` puts the op where it belongs:

* inside a transaction (``atomic``), in a buffer that is published when it commits, as one
  message with every op the transaction made (a rolled-back savepoint drops its own ops);
* inside ``batch()``, in the batch, published when the block exits;
* otherwise, straight onto the broker.

Publishing never raises and never waits long for the broker: a failed publish writes the
message to the ``Outbox`` table of the same database, and the relay sends it later.
"""

from __future__ import annotations

import asyncio
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


class _Batch(list[Operation]):
    """The ops of one ``batch()`` block. Once the block has exited it is ``closed``: a task
    started inside it (``asyncio.create_task`` copies the context) that makes an op later
    must not append it to a list that has already been sent."""

    closed = False


# Open batch() blocks, innermost last. A context variable, so that concurrent requests served
# by one thread (async views) keep their own.
_batch: ContextVar[tuple[_Batch, ...]] = ContextVar("django_cio_batch", default=())
_local = threading.local()


# -- where an op goes ---------------------------------------------------------------------

def enqueue(op: Operation, using: str | None = None) -> None:
    """Queue a validated op: after the current transaction commits, or with the batch."""
    if not get_settings().enabled:
        return
    alias = using or _atomic_alias()
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block:
        _flush_first_at_commit(connection)
        transaction.on_commit(_Committed(op, alias), using=alias, robust=True)
    else:
        _hand_on([op], alias)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Send every op made inside the block (and committed, if made in a transaction) as one
    message when the block exits, whether it exits normally or by an exception. The
    middleware wraps each request in one."""
    ops: list[Operation] = []
    try:
        with collect() as ops:
            yield
    finally:
        if ops:
            _hand_on(ops, DEFAULT_DB_ALIAS)


@contextlib.contextmanager
def collect() -> Iterator[list[Operation]]:
    """Like ``batch()``, but hands the ops to the caller instead of sending them (an async
    caller sends them from a thread). The caller must send them on every exit path."""
    ops = _Batch()
    token = _batch.set((*_batch.get(), ops))
    try:
        yield ops
    finally:
        ops.closed = True
        _batch.reset(token)


def _atomic_alias() -> str:
    """The database whose transaction the op belongs to: the default one, else any open."""
    if transaction.get_connection(DEFAULT_DB_ALIAS).in_atomic_block:
        return DEFAULT_DB_ALIAS
    for alias in connections:
        if connections[alias].in_atomic_block:
            return alias
    return DEFAULT_DB_ALIAS


def _hand_on(ops: list[Operation], alias: str) -> None:
    """Ops outside a transaction (or committed) join the innermost open batch if there is
    one, else go to the broker."""
    for open_batch in reversed(_batch.get()):
        if not open_batch.closed:
            open_batch.extend(ops)
            return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop in this thread: publish here
        publish(ops, alias)
    else:  # the broker and the Outbox are blocking I/O, which an event loop must not run
        loop.run_in_executor(None, publish, ops, alias)


# -- one transaction's ops ----------------------------------------------------------------

class _Committed:
    """The ``on_commit`` hook of one op. Django drops it if its savepoint rolls back.

    At commit, ``_flush_first_at_commit`` takes every surviving hook of ours off the list and
    sends their ops as one message before any other hook runs: Django stops running a
    transaction's hooks at the first one that raises, and an app's hook (Celery's own
    ``delay_on_commit`` when the broker is down) must not cost us committed ops. Run by anyone
    else (``captureOnCommitCallbacks`` in tests), a hook hands on its own op.
    """

    def __init__(self, op: Operation, alias: str) -> None:
        self.op, self.alias = op, alias

    def __call__(self) -> None:
        _hand_on([self.op], self.alias)


def _flush_first_at_commit(connection: Any) -> None:
    """Make ``connection`` send our committed ops before it runs the other commit hooks.

    Django has no public hook for "after commit, before the other callbacks"; it calls
    ``run_and_clear_commit_hooks()`` once the outermost atomic block has committed (never
    after a rollback, which clears the list), so this wraps that method on the connection
    object, once. The list's shape, ``(savepoint ids, callable, robust)`` since Django 4.2, is
    pinned by the tests.
    """
    if "run_and_clear_commit_hooks" in connection.__dict__:
        return
    run_django_hooks = connection.run_and_clear_commit_hooks

    def run_and_clear_commit_hooks() -> None:
        hooks = connection.run_on_commit
        ours = [hook[1] for hook in hooks if isinstance(hook[1], _Committed)]
        if ours:
            connection.run_on_commit = [h for h in hooks if not isinstance(h[1], _Committed)]
            _hand_on([hook.op for hook in ours], ours[0].alias)
        run_django_hooks()

    connection.run_and_clear_commit_hooks = run_and_clear_commit_hooks


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
) -> bool:
    """Publish one ``deliver`` message, else park it in the Outbox; never raises (the request
    path: neither the broker nor the database may fail the caller's request). Returns whether
    the message is safe: on the broker or in the Outbox."""
    try:
        publish_to_broker(ops, failures=failures, countdown=delay)
        return True
    except Exception as exc:  # whatever the broker does, the caller must not see it
        logger.warning(
            "customerio: broker unavailable (%s); %d op(s) kept in the outbox",
            type(exc).__name__, len(ops),
        )
        try:
            park(ops, failures=failures, delay=delay, using=using)
            return True
        except Exception as db_error:  # only the type: a database error may quote the values
            logger.error("customerio: broker and outbox both unavailable (%s); %d op(s) lost",
                         type(db_error).__name__, len(ops))
            return False


def park(ops: list[Json], *, failures: int = 0, delay: float = 0,
         using: str = DEFAULT_DB_ALIAS) -> None:
    """Write a message to the Outbox, for the relay to publish after ``delay`` s. Raises on
    database errors.

    The row is committed at once whatever transactions are open: written inside one, a later
    rollback there would take it away. So while the Outbox's database is inside an atomic
    block, a thread of our own writes it on a connection of its own (not on SQLite, where that
    connection would wait for the open transaction's lock).
    """
    from .models import Outbox

    alias = using if router.allow_migrate_model(using, Outbox) else router.db_for_write(Outbox)

    def write() -> None:
        Outbox.objects.using(alias).create(
            ops=ops, failures=failures, not_before=timezone.now() + timedelta(seconds=delay)
        )

    connection = connections[alias]
    if connection.in_atomic_block and connection.vendor != "sqlite":
        _in_own_thread(write)
    else:
        write()


def _in_own_thread(function: Any) -> None:
    """Run ``function`` on a thread of its own (so on database connections of its own, closed
    after); raise what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as exc:  # handed to the caller
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="django-cio-park")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def publish_to_broker(ops: list[Json], *, failures: int = 0, countdown: float = 0) -> None:
    """One ``deliver`` message on this thread's broker connection. Raises on broker errors."""
    from .tasks import deliver

    publish_task(
        deliver, (ops,), kwargs={"failures": failures} if failures else None,
        countdown=countdown or None,
        # Celery copies the arguments' repr into headers, events and Flower: no values.
        argsrepr=f"[<{len(ops)} ops>]", kwargsrepr=f"{{'failures': {failures}}}",
    )


def publish_task(task: Any, args: tuple[Any, ...], **options: Any) -> None:
    """``task`` on the delivery queue, by this thread's broker connection; returns once the
    broker has it (RabbitMQ: confirmed; Redis: written). Short timeouts and no retry loop: a
    caller that cannot wait has a fallback. Raises on broker errors."""
    for attempt in (1, 2):
        fresh = getattr(_local, "producer", None) is None or _local.pid != os.getpid()
        try:
            task.apply_async(args, queue=get_settings().queue, producer=_producer(),
                             retry=False, timeout=PUBLISH_TIMEOUT,
                             confirm_timeout=PUBLISH_TIMEOUT, **options)
            return
        except Exception:
            _drop_producer()
            # A connection that sat idle may have been dropped on the way (a NAT, a load
            # balancer): one more try on a new one, but never twice on a new one.
            if fresh or attempt == 2:
                raise


def _producer() -> Any:
    """This thread's kombu producer, on a connection with short timeouts (made once)."""
    if getattr(_local, "pid", None) != os.getpid() or _local.producer is None:
        from .tasks import deliver

        app = deliver.app
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


def _drop_producer() -> None:
    producer = getattr(_local, "producer", None)
    _local.producer = None
    if producer is not None:
        with contextlib.suppress(Exception):
            # Without a goodbye to the broker: on a dead link that would wait for an answer.
            producer.connection.collect()
