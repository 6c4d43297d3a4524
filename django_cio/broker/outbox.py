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
# before it tries the broker again, so a broker out of reach costs one request the publish
# timeout (1-2 s on a partition, no FIN), not every request of the outage; and until the
# rows it wrote meanwhile have been relayed (the relay goes in id order): a message sent
# straight to the broker would overtake them (a parked identify landing after the delete
# that followed it). Other processes' messages are not held back: the order kept is this
# process's. A row the relay cannot send holds the detour up for at most DETOUR_MAX.
SKIP_BROKER_FOR = 5.0
DETOUR_MAX = 60.0


class _Detour:
    """This process's detour around the broker, by the Outbox."""

    def __init__(self) -> None:
        self.until = self.since = 0.0
        self.parked: dict[str, tuple[int, int]] = {}  # database -> first and last row written
        self.lock = threading.Lock()

    def begin(self) -> None:
        with self.lock:
            self.since = self.since or time.monotonic()
            self.until = time.monotonic() + SKIP_BROKER_FOR

    def parked_row(self, row: Any) -> None:
        with self.lock:
            first, _ = self.parked.get(row._state.db, (row.pk, row.pk))
            self.parked[row._state.db] = (first, row.pk)

    def active(self) -> bool:
        with self.lock:
            if self.since and time.monotonic() - self.since > DETOUR_MAX:
                self.end()
            if time.monotonic() < self.until:
                return True
            parked = dict(self.parked)
            if not parked:
                self.end()
                return False
        try:
            waiting = _any_left(parked)
        except Exception:  # the database cannot tell: keep the order
            waiting = True
        with self.lock:
            if waiting:
                self.until = time.monotonic() + 1.0  # asked again in a second, not per message
                return True
            if self.parked == parked:  # nothing parked meanwhile
                self.end()
            return bool(self.parked)

    def end(self) -> None:
        self.until = self.since = 0.0
        self.parked.clear()


def _any_left(parked: dict[str, tuple[int, int]]) -> bool:
    """Whether rows of these spans are still in the Outbox (asked as ``park`` writes: never
    inside the caller's open transaction, which an error would break)."""
    from ..models import Outbox  # here: the package root imports this module early

    def left(alias: str, span: tuple[int, int]) -> bool:
        return Outbox.objects.using(alias).filter(pk__range=span, failures=0).exists()

    return any(_outside_transaction(alias, lambda a=alias, s=span: left(a, s))
               for alias, span in parked.items())


_detour = _Detour()


def publish_or_park(
    ops: list[Json], *, failures: int = 0, delay: float = 0, using: str = DEFAULT_DB_ALIAS
) -> bool:
    """Publish one ``deliver`` message, else park it in the Outbox; never raises (the request
    path: neither the broker nor the database may fail the caller's request). Returns whether
    the message is safe: on the broker or in the Outbox."""
    detour = _detour.active()
    if not detour:
        try:
            publish_ops(ops, failures=failures, countdown=delay)
            return True
        except Exception as exc:  # whatever the broker does, the caller must not see it
            _detour.begin()
            logger.warning(
                "customerio: broker unavailable (%s); ops go to the outbox, the broker is "
                "tried again in %.0f s", type(exc).__name__, SKIP_BROKER_FOR,
            )
    try:
        row = park(ops, failures=failures, delay=delay, using=using)
    except Exception as db_error:  # only the type: a database error may quote the values
        if detour and _published(ops, failures, delay):  # the broker may be back by now
            return True
        logger.error("customerio: broker and outbox both unavailable (%s); %d op(s) lost",
                     type(db_error).__name__, len(ops))
        return False
    if not delay and not failures:  # (a retry is meant to come later)
        _detour.parked_row(row)
    return True


def _published(ops: list[Json], failures: int, delay: float) -> bool:
    try:
        publish_ops(ops, failures=failures, countdown=delay)
    except Exception:
        return False
    return True


def try_broker_again() -> None:
    """End the detour: the next message tries the broker (its URL changed, say)."""
    with _detour.lock:
        _detour.end()


def park(ops: list[Json], *, failures: int = 0, delay: float = 0,
         using: str = DEFAULT_DB_ALIAS) -> Any:
    """Write a message to the Outbox, for the relay to publish after ``delay`` s; the row.
    Raises on database errors.

    The row is committed at once whatever transactions are open: written inside one, a later
    rollback there would take it away. So while the Outbox's database is inside an atomic
    block, a thread of our own writes it on a connection of its own (not on SQLite, where that
    connection would wait for the open transaction's lock).
    """
    from ..models import Outbox  # here: the package root imports this module before apps load

    alias = using if router.allow_migrate_model(using, Outbox) else router.db_for_write(Outbox)

    def write() -> Outbox:
        return Outbox.objects.using(alias).create(
            ops=ops, failures=failures, workspace=one_workspace(ops),
            not_before=timezone.now() + timedelta(seconds=delay),
        )

    return _outside_transaction(alias, write)


def _outside_transaction(alias: str, function: Any) -> Any:
    """``function()``, on a connection of its own while ``alias`` is inside an atomic block
    (not on SQLite, where that connection would wait for the open transaction's lock)."""
    connection = connections[alias]
    if connection.in_atomic_block and connection.vendor != "sqlite":
        return _in_own_thread(function)
    return function()


def _in_own_thread(function: Any) -> Any:
    """Run ``function`` on a thread of its own (so on database connections of its own, closed
    after); return what it returned, raise what it raised."""
    errors: list[BaseException] = []
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(function())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name="django-cio-park")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


