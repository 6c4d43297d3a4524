from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_cio.status import check_accounts
from django_cio.status import status as delivery_status


class Command(BaseCommand):
    help = (
        "Show how delivery is doing, per workspace: messages waiting in its delivery queue, "
        "Outbox messages and the age of the oldest, dead letters by reason, the shared rate "
        "limiter, refused credentials or an API not answering; then identify dedup and "
        "backfill runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--check", action="store_true",
            help="Instead, ask Customer.io about each workspace's credentials: accepted, in "
            "the configured REGION, and not the same workspace under two names. Exits 1 on "
            "any problem (for deploy pipelines).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            self.report_accounts(as_json=options["json"])
            return
        status = delivery_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        for name, workspace in status["workspaces"].items():
            self.show_workspace(name, workspace)
        counts = status["dedup"]
        if counts:
            self.stdout.write(f"Identify dedup: {counts['hits']} dropped, "
                              f"{counts['misses']} sent")
        for run in status["backfills"]:
            self.stdout.write(f"Backfill #{run['id']} of {run['model']}: {run['status']}, "
                              f"{run['done']:,}/{run['total']:,} rows ({run['sent']:,} sent, "
                              f"{run['failed']:,} failed)")

    def show_workspace(self, name: str, status: dict[str, Any]) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"Workspace {name!r}"))
        if status["credentials_refused"]:
            self.stderr.write(self.style.ERROR(
                f"Customer.io refuses workspace {name!r}'s credentials (HTTP "
                f"{status['credentials_refused']['status']}): nothing is sent until they work"))
        if status["not_answering"]:
            self.stderr.write(self.style.ERROR(
                f"Workspace {name!r}'s Track API does not answer: one delivery at a time tries"))
        queue, outbox, dead = status["queue"], status["outbox"], status["dead_letters"]
        waiting = queue.get("messages", f"unknown ({queue.get('error')})")
        consumers = queue.get("consumers")
        counted = ("consumers not counted on Redis" if "messages" in queue and consumers is None
                   else f"{consumers if consumers is not None else '?'} consumer(s)")
        self.stdout.write(f"  Broker: {queue['broker']}")
        self.stdout.write(f"  Queue {queue['name']!r}: {waiting} message(s) waiting, {counted}")
        self.stdout.write(f"  Outbox: {outbox['messages']} message(s), {outbox['due']} due, "
                          f"oldest {outbox['oldest_age_seconds']} s old")
        self.stdout.write(f"  Dead letters: {dead['total']}")
        for reason, count in dead["by_reason"].items():
            self.stdout.write(f"    {count:>8}  {reason}")
        messages = status["messages"]
        self.stdout.write(f"  Transactional messages: {messages['sent']} sent, "
                          f"{messages['sending']} claimed but unanswered (in flight, or may "
                          "have been sent)")
        limiter = status["rate_limiter"]
        if limiter["shared"]:
            self.stdout.write(f"  Rate limiter: {limiter['rate']} shared in Redis, "
                              f"booked {limiter['booked_seconds']} s ahead")
        else:
            self.stdout.write("  Rate limiter: per process (no Redis reachable)")

    def report_accounts(self, as_json: bool) -> None:
        accounts = check_accounts()
        if as_json:
            self.stdout.write(json.dumps(accounts, indent=2))
        for account in accounts:
            name, problems = account["workspace"], account["problems"]
            if not as_json and "region" in account:
                self.stdout.write(f"Workspace {name!r}: credentials accepted, region "
                                  f"{account['region']}, Customer.io workspace "
                                  f"{account['environment_id']}")
            for problem in problems:
                self.stderr.write(self.style.ERROR(f"Workspace {name!r}: {problem}"))
        failed = sum(bool(account["problems"]) for account in accounts)
        if failed:
            raise CommandError(f"{failed} workspace(s) with problems", returncode=1)
        if not as_json:
            self.stdout.write(self.style.SUCCESS("Every workspace checks out."))
