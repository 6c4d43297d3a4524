"""How delivery is doing, as data: the delivery queue, the Outbox, dead letters, the shared
rate limiter, identify dedup, backfill runs and refused credentials (``cio_status``, and the
load test's wait for an empty queue)."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db.models import Count, Min
from django.utils import timezone

from . import dedup
from .broker.redis import on_redis, prefixed, queue_lists
from .broker.relay import databases
from .conf import get_settings
from .credentials import refusal
from .models import BackfillRun, DeadLetter, Outbox
from .ratelimit import get_limiter


def status() -> dict[str, Any]:
    """Everything ``cio_status`` shows (``--json`` prints this)."""
    return {
        "queue": queue_status(), "outbox": outbox_status(),
        "dead_letters": dead_letter_status(), "rate_limiter": get_limiter().state(),
        "dedup": dedup.counters(), "backfills": backfill_status(),
        "credentials_refused": refusal(),
    }


def queue_status() -> dict[str, Any]:
    """The delivery queue on the broker this process publishes to (its URL without the
    password): messages waiting and, where the broker counts them, consumers."""
    name = get_settings().queue
    with current_app.connection_for_read(connect_timeout=2) as connection:
        status: dict[str, Any] = {"name": name, "broker": connection.as_uri()}
        try:
            channel = connection.default_channel
            if on_redis(channel):  # an empty queue is no key at all
                with channel.conn_or_acquire() as client:
                    lists = prefixed(channel, list(queue_lists(channel, [name])))
                    return {**status, "messages": sum(client.llen(key) for key in lists),
                            "consumers": None}
            _, messages, consumers = channel.queue_declare(name, passive=True)
        except Exception as exc:  # a down broker or a missing queue is a status too
            return {**status, "error": type(exc).__name__}
    return {**status, "messages": messages, "consumers": consumers}


def outbox_status() -> dict[str, Any]:
    now = timezone.now()
    messages = due = 0
    oldest = None
    for alias in databases():
        rows = Outbox.objects.using(alias)
        stats = rows.aggregate(count=Count("id"), oldest=Min("created_at"))
        messages += stats["count"]
        due += rows.filter(not_before__lte=now).count()
        if stats["oldest"] and (oldest is None or stats["oldest"] < oldest):
            oldest = stats["oldest"]
    age = round((now - oldest).total_seconds(), 1) if oldest else 0
    return {"messages": messages, "due": due, "oldest_age_seconds": age}


def dead_letter_status() -> dict[str, Any]:
    rows = DeadLetter.objects.values("reason").annotate(count=Count("id")).order_by("-count")
    by_reason = {row["reason"]: row["count"] for row in rows}
    return {"total": sum(by_reason.values()), "by_reason": by_reason}


def backfill_status(latest: int = 5) -> list[dict[str, Any]]:
    """The unfinished backfill runs and the latest few."""
    runs = BackfillRun.objects.exclude(status=BackfillRun.DONE)[:20]
    recent = BackfillRun.objects.filter(status=BackfillRun.DONE)[:latest]
    return [{"id": run.pk, "model": run.model, "status": run.status, "total": run.total,
             "done": run.sent + run.skipped + run.failed, "sent": run.sent,
             "failed": run.failed, "updated_at": run.updated_at.isoformat()}
            for run in [*runs, *recent]]
