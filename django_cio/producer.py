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
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from .backends import backend_class
from .broker.outbox import publish_or_park
from .broker.publish import split
from .conf import get_settings
from .operations import Operation
from .routing import route

logger = logging.getLogger("django_cio")



class _Batch(list[Operation]):
    """The ops of one ``batch()`` block. Once the block has exited it is ``closed``: a task
    started inside it (``asyncio.create_task`` copies the context) that makes an op later
    must not append it to a list that has already been sent."""

    closed = False


# Open batch() blocks, innermost last. A context variable, so that concurrent requests served
# by one thread (async views) keep their own.
_batch: ContextVar[tuple[_Batch, ...]] = ContextVar("django_cio_batch", default=())


# -- where an op goes ---------------------------------------------------------------------

def enqueue(op: Operation, using: str | None = None) -> None:
    """Queue a validated op for its workspace (``routing``): after the current transaction
    commits, or with the batch."""
    route(op)
    if not get_settings().enabled:
        return
    alias = using or _atomic_alias()
    connection = transaction.get_connection(alias)
    if connection.in_atomic_block:
        _flush_first_at_commit(connection)
        transaction.on_commit(_Committed(op, alias), using=alias, robust=True)
    else:
        _to_batch_or_flush([op], alias)


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
            _to_batch_or_flush(ops, DEFAULT_DB_ALIAS)


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


def _to_batch_or_flush(ops: list[Operation], alias: str) -> None:
    """Ops outside a transaction (or committed) join the innermost open batch if there is
    one, else go to the broker."""
    for open_batch in reversed(_batch.get()):
        if not open_batch.closed:
            open_batch.extend(ops)
            return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop in this thread: publish here
        flush(ops, alias)
    else:  # the broker and the Outbox are blocking I/O, which an event loop must not run
        loop.run_in_executor(None, flush, ops, alias)


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
        _to_batch_or_flush([self.op], self.alias)


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
            _to_batch_or_flush([hook.op for hook in ours], ours[0].alias)
        run_django_hooks()

    connection.run_and_clear_commit_hooks = run_and_clear_commit_hooks


# -- to the broker, or the Outbox -----------------------------------------------------------

def flush(ops: Sequence[Operation], using: str = DEFAULT_DB_ALIAS) -> None:
    """Send ops to the broker in as few messages as fit; never raises."""
    if backend_class().delivers_inline:
        # Imported here: the engine loads the models, and the package root imports this
        # module before Django has loaded its apps.
        from .delivery.engine import deliver_inline

        deliver_inline([op.to_dict() for op in ops])
        return
    for chunk in split([op.to_dict() for op in ops]):
        publish_or_park(chunk, using=using)
