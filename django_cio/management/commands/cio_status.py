from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_cio.conf import get_settings
from django_cio.status import status as delivery_status


class Command(BaseCommand):
    help = (
        "Show how delivery is doing: messages waiting in the broker's delivery queue, Outbox "
        "messages and the age of the oldest, dead letters by reason, the shared rate "
        "limiter, identify dedup and backfill runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, **options: Any) -> None:
        status = delivery_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        if status["credentials_refused"]:
            self.stderr.write(self.style.ERROR(
                f"Customer.io refuses the credentials (HTTP "
                f"{status['credentials_refused']['status']}): nothing is sent until they work"))
        queue, outbox, dead = status["queue"], status["outbox"], status["dead_letters"]
        waiting = queue.get("messages", f"unknown ({queue.get('error')})")
        consumers = queue.get("consumers")
        counted = ("consumers not counted on Redis" if "messages" in queue and consumers is None
                   else f"{consumers if consumers is not None else '?'} consumer(s)")
        self.stdout.write(f"Broker: {queue['broker']}")
        self.stdout.write(f"Queue {queue['name']!r}: {waiting} message(s) waiting, {counted}")
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
