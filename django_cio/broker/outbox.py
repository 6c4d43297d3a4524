"""The Outbox: where a message waits when the broker cannot take it (or must not hold it that
long), until the relay (``broker.relay``) publishes it."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router
from django.utils import timezone

from ..operations import Json
from ..routing import one_workspace
from .publish import publish_ops

logger = logging.getLogger("django_cio")


# After a publish fails, this process writes messages straight to the Outbox for this long
# before it tries the broker again: a broker out of reach costs one request the publish
# timeout (1-2 s on a partition, no FIN), not every request of the outage.
SKIP_BROKER_FOR = 5.0
_skip_broker_until = 0.0


def publish_or_park(
    ops: list[Json], *, failures: int = 0, delay: float = 0, using: str = DEFAULT_DB_ALIAS
) -> bool:
    """Publish one ``deliver`` message, else park it in the Outbox; never raises (the request
    path: neither the broker nor the database may fail the caller's request). Returns whether
    the message is safe: on the broker or in the Outbox."""
    global _skip_broker_until
    if time.monotonic() >= _skip_broker_until:
        try:
            publish_ops(ops, failures=failures, countdown=delay)
            return True
        except Exception as exc:  # whatever the broker does, the caller must not see it
            _skip_broker_until = time.monotonic() + SKIP_BROKER_FOR
            logger.warning(
                "customerio: broker unavailable (%s); ops go to the outbox, the broker is "
                "tried again in %.0f s", type(exc).__name__, SKIP_BROKER_FOR,
            )
    try:
        park(ops, failures=failures, delay=delay, using=using)
        return True
    except Exception as db_error:  # only the type: a database error may quote the values
        logger.error("customerio: broker and outbox both unavailable (%s); %d op(s) lost",
                     type(db_error).__name__, len(ops))
        return False


def try_broker_again() -> None:
    """Forget a failed publish: the next message tries the broker (its URL changed, say)."""
    global _skip_broker_until
    _skip_broker_until = 0.0


def park(ops: list[Json], *, failures: int = 0, delay: float = 0,
         using: str = DEFAULT_DB_ALIAS) -> None:
    """Write a message to the Outbox, for the relay to publish after ``delay`` s. Raises on
    database errors.

    The row is committed at once whatever transactions are open: written inside one, a later
    rollback there would take it away. So while the Outbox's database is inside an atomic
    block, a thread of our own writes it on a connection of its own (not on SQLite, where that
    connection would wait for the open transaction's lock).
    """
    from ..models import Outbox  # here: the package root imports this module before apps load

    alias = using if router.allow_migrate_model(using, Outbox) else router.db_for_write(Outbox)

    def write() -> None:
        Outbox.objects.using(alias).create(
            ops=ops, failures=failures, workspace=one_workspace(ops),
            not_before=timezone.now() + timedelta(seconds=delay),
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


