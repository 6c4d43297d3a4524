from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_cio.broker.relay import relay


class Command(BaseCommand):
    help = (
        "Publish the Outbox's due messages (kept there while the broker was down, or parked "
        "for a long retry wait) to the broker. Every Celery worker already runs the same "
        "relay every few seconds; this command is for CUSTOMERIO['RELAY'] = False, or by hand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=1000,
                            help="Most messages to publish per database per pass (default 1000).")
        parser.add_argument("--loop", type=float, metavar="SECONDS",
                            help="Keep relaying, pausing SECONDS between passes, until Ctrl-C.")

    def handle(self, *args: Any, limit: int, loop: float | None, **options: Any) -> None:
        while True:
            published = relay(limit=limit)
            if options["verbosity"] >= 1 and (published or loop is None):
                self.stdout.write(f"Published {published} outbox message(s).")
            if loop is None:
                return
            try:
                time.sleep(loop)
            except KeyboardInterrupt:
                return
