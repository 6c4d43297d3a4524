from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_cio.delivery.dead_letters import replay
from django_cio.delivery.messages import MAY_HAVE_BEEN_SENT
from django_cio.models import DeadLetter


class Command(BaseCommand):
    help = (
        "Queue dead letters again with their original event ids, and delete them. A replayed "
        "op that fails again becomes a new dead letter. Choose which with --id, --reason, "
        "--kind, --workspace or --all. Transactional messages that may have been sent are "
        "replayed only by --id or with --may-have-been-sent: each may then arrive twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--id", type=int, action="append", dest="ids", metavar="ID",
                            help="A dead letter's id (repeatable).")
        parser.add_argument("--reason", help="Dead letters whose reason contains this text.")
        parser.add_argument("--kind", help="Dead letters of this op kind (identify, event, ...).")
        parser.add_argument("--workspace", help="Dead letters of this workspace (default, or a "
                            "name in CUSTOMERIO['WORKSPACES']).")
        parser.add_argument("--all", action="store_true", help="Every dead letter.")
        parser.add_argument("--may-have-been-sent", action="store_true",
                            help="Also replay transactional messages that may have been sent "
                            "(after checking in Customer.io that they were not).")
        parser.add_argument("--dry-run", action="store_true",
                            help="Only say how many would be replayed.")

    def handle(self, *args: Any, ids: list[int] | None, reason: str | None, kind: str | None,
               workspace: str | None, all: bool, may_have_been_sent: bool, dry_run: bool,
               **options: Any) -> None:
        if not (ids or reason or kind or workspace or all):
            raise CommandError("Say which dead letters to replay: --id, --reason, --kind, "
                               "--workspace or --all.")
        letters = DeadLetter.objects.order_by("id")
        if ids:
            letters = letters.filter(pk__in=ids)
        if reason:
            letters = letters.filter(reason__icontains=reason)
        if kind:
            letters = letters.filter(kind=kind)
        if workspace:
            letters = letters.filter(workspace=workspace)
        if not (ids or may_have_been_sent):  # a sweep never resends an email by chance
            letters = letters.exclude(reason__startswith=MAY_HAVE_BEEN_SENT)
        if dry_run:
            self.stdout.write(f"Would replay {letters.count()} dead letter(s).")
            return
        total = letters.count()
        count = replay(letters)
        if count < total:
            raise CommandError(f"Replayed {count} of {total} dead letter(s); the others are kept: "
                               "their workspace is not in CUSTOMERIO['WORKSPACES'], or neither "
                               "the broker nor the Outbox took them (try again later).")
        self.stdout.write(self.style.SUCCESS(f"Replayed {count} dead letter(s)."))
