from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Count, Min
from django.utils import timezone

from django_cio import dedup
from django_cio.conf import get_settings
from django_cio.credentials import refusal
from django_cio.models import BackfillRun, DeadLetter, Outbox
from django_cio.ratelimit import get_limiter
from django_cio.relay import databases


class Command(BaseCommand):
    help = (
        "Show how delivery is doing: messages waiting in the broker's delivery queue, Outbox "
        "messages and the age of the oldest, dead letters by reason, the shared rate "
        "limiter, identify dedup and backfill runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, **options: Any) -> None:
        status: dict[str, Any] = {
            "queue": queue_status(), "outbox": outbox_status(),
            "dead_letters": dead_letter_status(), "rate_limiter": get_limiter().state(),
            "dedup": dedup.counters(), "backfills": backfill_status(),
            "credentials_refused": refusal(),
        }
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        if status["credentials_refused"]:
            self.stderr.write(self.style.ERROR(
                f"Customer.io refuses the credentials (HTTP "
                f"{status['credentials_refused']['status']}): nothing is sent until they work"))
        queue, outbox, dead = status["queue"], status["outbox"], status["dead_letters"]
        waiting = queue.get("messages", f"unknown ({queue.get('error')})")
        self.stdout.write(f"Queue {queue['name']!r}: {waiting} message(s) waiting, "
                          f"{queue.get('consumers', '?')} consumer(s)")
        self.stdout.write(f"Outbox: {outbox['messages']} message(s), {outbox['due']} due, "
                          f"oldest {outbox['oldest_age_seconds']} s old")
        self.stdout.write(f"Dead letters: {dead['total']}")
        for reason, count in dead["by_reason"].items():
            self.stdout.write(f"  {count:>8}  {reason}")
        limiter = status["rate_limiter"]
        if limiter["shared"]:
            self.stdout.write(f"Rate limiter: {get_settings().rate_limit} shared in Redis, "
                              f"booked {limiter['booked_seconds']} s ahead")
        else:
            self.stdout.write("Rate limiter: per process (no Redis reachable)")
        counts = status["dedup"]
        if counts:
            self.stdout.write(f"Identify dedup: {counts['hits']} dropped, "
                              f"{counts['misses']} sent")
        for run in status["backfills"]:
            self.stdout.write(f"Backfill #{run['id']} of {run['model']}: {run['status']}, "
                              f"{run['done']:,}/{run['total']:,} rows ({run['sent']:,} sent, "
                              f"{run['failed']:,} failed)")


def queue_status() -> dict[str, Any]:
    from django_cio.tasks import deliver

    name = get_settings().queue
    try:
        with deliver.app.connection_for_read(connect_timeout=2) as connection:
            _, messages, consumers = connection.default_channel.queue_declare(name, passive=True)
    except Exception as exc:  # a down broker or a missing queue is a status too
        return {"name": name, "error": type(exc).__name__}
    return {"name": name, "messages": messages, "consumers": consumers}


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
