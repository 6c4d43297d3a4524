"""The relay: publish the Outbox's due messages to the broker, each exactly once.

Several relays may run at once (beat on many hosts, ``manage.py cio_relay`` by hand). Where the
database can skip locked rows (PostgreSQL, MySQL 8, Oracle), each relay locks the rows it takes
with ``SELECT ... FOR UPDATE SKIP LOCKED``. Elsewhere (SQLite) a relay leases a row by moving
its ``not_before`` forward with a compare-and-set ``UPDATE``: only one relay's update matches.
A relay that dies after publishing and before deleting leaves the row to be sent again, which
the ops' event ids make harmless.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import DatabaseError, connections, router, transaction
from django.utils import timezone

from .models import Outbox
from .producer import publish_to_broker

logger = logging.getLogger("django_cio")

# How long a leased row is left alone by other relays (databases without SKIP LOCKED).
LEASE = timedelta(minutes=5)


def databases() -> list[str]:
    """The database aliases that hold an Outbox table."""
    return [alias for alias in connections if router.allow_migrate_model(alias, Outbox)]


def relay(limit: int = 1000, using: str | None = None) -> int:
    """Publish up to ``limit`` due messages per database; return how many were published."""
    published = 0
    for alias in [using] if using else databases():
        claim = (_relay_locked if connections[alias].features.has_select_for_update_skip_locked
                 else _relay_leased)
        try:
            published += claim(alias, limit)
        except DatabaseError as exc:  # one database down must not stop the others' relay
            logger.warning("customerio: outbox relay failed on database %r (%s)",
                           alias, type(exc).__name__)
    return published


def _relay_locked(alias: str, limit: int) -> int:
    with transaction.atomic(using=alias):
        rows = list(
            Outbox.objects.using(alias).select_for_update(skip_locked=True)
            .filter(not_before__lte=timezone.now()).order_by("id")[:limit]
        )
        done = []
        for row in rows:
            if not _publish(row):
                break  # the broker is down: the rest waits for the next relay
            done.append(row.pk)
        Outbox.objects.using(alias).filter(pk__in=done).delete()
    return len(done)


def _relay_leased(alias: str, limit: int) -> int:
    due = list(
        Outbox.objects.using(alias).filter(not_before__lte=timezone.now()).order_by("id")
        .values_list("pk", "not_before")[:limit]
    )
    published = 0
    for pk, not_before in due:
        rows = Outbox.objects.using(alias).filter(pk=pk, not_before=not_before)
        if not rows.update(not_before=timezone.now() + LEASE):
            continue  # another relay took it
        row = Outbox.objects.using(alias).get(pk=pk)
        if not _publish(row):
            Outbox.objects.using(alias).filter(pk=pk).update(not_before=not_before)  # give back
            break
        row.delete()
        published += 1
    return published


def _publish(row: Outbox) -> bool:
    try:
        publish_to_broker(row.ops, failures=row.failures)
    except Exception as exc:  # the row stays for the next relay
        logger.warning("customerio: outbox relay cannot reach the broker (%s)", type(exc).__name__)
        return False
    return True
