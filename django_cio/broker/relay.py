"""The relay: publish the Outbox's due messages to the broker, each exactly once.

It runs by itself in every Celery worker (``OutboxRelay``, a worker bootstep added at start-up:
a thread in the main process relays every few seconds), so nothing depends on beat being
wired, and a backlog on the delivery queue cannot hold it up. ``manage.py cio_relay`` runs the
same relay by hand.

Several relays may run at once (beat on many hosts, ``manage.py cio_relay`` by hand). Where the
database can skip locked rows (PostgreSQL, MySQL 8, Oracle), each relay locks the rows it takes
with ``SELECT ... FOR UPDATE SKIP LOCKED``. Elsewhere (SQLite) a relay leases a row by moving
its ``not_before`` forward with a compare-and-set ``UPDATE``: only one relay's update matches.
A relay that dies after publishing and before deleting leaves the row to be sent again, which
the ops' event ids make harmless.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta
from typing import Any

from celery import bootsteps
from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from ..conf import get_settings
from ..exceptions import ConfigurationError
from ..models import Outbox
from .publish import publish_ops

logger = logging.getLogger("django_cio")

# How long a leased row is left alone by other relays (databases without SKIP LOCKED).
ROW_LEASE = timedelta(minutes=5)
# Seconds between two passes of a worker's relay (with jitter, so workers spread out).
RELAY_EVERY = 5.0


def databases() -> list[str]:
    """The database aliases that hold an Outbox table."""
    return [alias for alias in connections if router.allow_migrate_model(alias, Outbox)]


def relay(limit: int = 1000, using: str | None = None) -> int:
    """Publish up to ``limit`` due messages per database; return how many were published."""
    published = 0
    for alias in [using] if using else databases():
        claim = (relay_locked if connections[alias].features.has_select_for_update_skip_locked
                 else relay_leased)
        try:
            published += claim(alias, limit)
        except DatabaseError as exc:  # one database down must not stop the others' relay
            logger.warning("customerio: outbox relay failed on database %r (%s)",
                           alias, type(exc).__name__)
    return published


def relay_locked(alias: str, limit: int) -> int:
    """Claim due rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8)."""
    with transaction.atomic(using=alias):
        rows = list(
            Outbox.objects.using(alias).select_for_update(skip_locked=True)
            .filter(not_before__lte=timezone.now()).order_by("id")[:limit]
        )
        done: list[int] = []
        unknown: list[int] = []
        for row in rows:
            outcome = _publish(row)
            if outcome is BROKER_DOWN:
                break  # the rest waits for the next relay
            (done if outcome is PUBLISHED else unknown).append(row.pk)
        Outbox.objects.using(alias).filter(pk__in=done).delete()
        Outbox.objects.using(alias).filter(pk__in=unknown).update(
            not_before=timezone.now() + ROW_LEASE)  # others' rows first, this one later
    return len(done)


def relay_leased(alias: str, limit: int) -> int:
    """Claim due rows by moving their ``not_before`` with a compare-and-set (SQLite)."""
    due = list(
        Outbox.objects.using(alias).filter(not_before__lte=timezone.now()).order_by("id")
        .values_list("pk", "not_before")[:limit]
    )
    published = 0
    for pk, not_before in due:
        rows = Outbox.objects.using(alias).filter(pk=pk, not_before=not_before)
        if not rows.update(not_before=timezone.now() + ROW_LEASE):
            continue  # another relay took it
        row = Outbox.objects.using(alias).get(pk=pk)
        outcome = _publish(row)
        if outcome is BROKER_DOWN:
            Outbox.objects.using(alias).filter(pk=pk).update(not_before=not_before)  # give back
            break
        if outcome is PUBLISHED:  # else leased for ROW_LEASE: others' rows first
            row.delete()
            published += 1
    return published


PUBLISHED, BROKER_DOWN, UNKNOWN_WORKSPACE = "published", "broker down", "unknown workspace"


def _publish(row: Outbox) -> str:
    """Publish a row's message: ``PUBLISHED``; ``BROKER_DOWN`` (it stays, and so do the rows
    after it); or ``UNKNOWN_WORKSPACE``: its workspace is not in these settings (removed, or
    added by a deploy this worker has not got yet), so it stays for a relay that knows it and
    the others' rows go on."""
    try:
        publish_ops(row.ops, failures=row.failures)
    except ConfigurationError as exc:
        logger.error("customerio: outbox message #%s kept: %s", row.pk, exc)
        return UNKNOWN_WORKSPACE
    except Exception as exc:  # the row stays for the next relay
        logger.warning("customerio: outbox relay cannot reach the broker (%s)", type(exc).__name__)
        return BROKER_DOWN
    return PUBLISHED


class OutboxRelay(bootsteps.StartStopStep):
    """A worker bootstep: relay the Outbox from a thread of the worker's main process.

    Added to every worker by ``add_relay_step`` (connected in ``AppConfig.ready``): wherever a
    worker runs, so does the relay. Relays on many workers may race; the row claims above make
    each row go out once.
    """

    label = "django-cio outbox relay"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self.thread = threading.Thread(target=self.run, name="django-cio-relay", daemon=True)
        self.thread.start()

    def stop(self, parent: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def terminate(self, parent: Any) -> None:
        # A worker that terminates (cold shutdown, or celery.contrib.testing's start_worker)
        # calls this instead of stop; the base class's would leave the thread relaying.
        self.stop(parent)

    def run(self) -> None:
        while not self.stopping.wait(RELAY_EVERY * random.uniform(0.5, 1.0)):
            try:
                relay()
            except Exception as exc:  # a bad pass must not end the relay for good
                logger.error("customerio: outbox relay pass failed (%s)", type(exc).__name__)
            finally:
                connections.close_all()  # this thread's own; none kept idle across passes


def add_relay_step(sender: Any, **kwargs: Any) -> None:
    """``worker_init`` receiver: give the starting worker the relay bootstep (unless
    ``CUSTOMERIO['RELAY']`` is off)."""
    steps = sender.app.steps["worker"]
    if get_settings().relay:
        steps.add(OutboxRelay)
    else:
        steps.discard(OutboxRelay)
