from __future__ import annotations

import contextlib
import signal
import sys
import time
from datetime import datetime
from typing import Any

from django.core.exceptions import FieldError
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from tqdm import tqdm

from django_cio import backfill
from django_cio.conf import get_settings
from django_cio.exceptions import ConfigurationError
from django_cio.models import BackfillRun
from django_cio.privacy import showing_ids


class Command(BaseCommand):
    help = (
        "Send existing rows of a registered model to Customer.io as identifies: in pages by "
        "primary key (flat memory), packed into v2 batches, under the shared rate limit, "
        "checkpointed after every page so that --resume continues where a stopped or crashed "
        "run left off. Exit status: 0 all sent, 1 some rows failed (dead letters) or the run "
        "was stopped, 2 usage or configuration error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("label", nargs="?", help="The model, as app_label.Model.")
        parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                            help="Only rows where FIELD equals VALUE (repeatable; Django "
                            "lookups such as date_joined__gte=2024-01-01 work too).")
        parser.add_argument("--batch-size", type=int,
                            help="Rows per page and checkpoint (default 1000).")
        parser.add_argument("--rate-share", type=float,
                            help="Most of the workspace's RATE_LIMIT this run may use, 0-1 "
                            "(default 1; live traffic shares the same limit either way).")
        parser.add_argument("--all", action="store_true",
                            help="Every registered model, one after another.")
        parser.add_argument("--since", metavar="DATE",
                            help="Only rows created or joined since DATE (ISO 8601), by the "
                            "registration's since_field (default: date_joined, created_at, "
                            "created, whichever the model has).")
        parser.add_argument("--ids-from", metavar="FILE",
                            help="Only rows whose primary keys are listed in FILE, one a line, "
                            "sent in the file's order (any size: read a page at a time).")
        parser.add_argument("--concurrency", type=int, metavar="N",
                            help="Pages sent at once while one thread reads (default 1); "
                            "raise it when Customer.io answers slowly. With --async: the "
                            "number of pk ranges sent in parallel (default 4).")
        parser.add_argument("--workspace", metavar="NAME",
                            help="Only the rows of this workspace (routed as live traffic is: "
                            "the registration's workspace(), else ROUTER, else default). "
                            "Default: a run per configured workspace.")
        parser.add_argument("--dedup", action="store_true", default=None,
                            help="Skip identifies Customer.io already has (default: send all).")
        parser.add_argument("--async", action="store_true", dest="in_workers",
                            help="Queue the run for the Celery workers (on the delivery queue, "
                            "in pk ranges) and return; follow it with cio_status or the admin.")
        parser.add_argument("--resume", nargs="?", const="last", metavar="RUN_ID",
                            help="Continue a stopped, failed or dead run (default: the latest "
                            "one), with its own options unless given again.")
        parser.add_argument("--stop", metavar="RUN_ID", type=int,
                            help="Stop a running run (in workers or another process) after its "
                            "current pages; --resume continues it.")
        parser.add_argument("--dry-run", action="store_true",
                            help="Count the rows, show a few ops (values hidden), estimate time.")
        parser.add_argument("--quiet", action="store_true", help="No progress output.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["stop"] is not None:
                self.stop_run(options["stop"])
                return
            runs = self.prepare(options)
            jobs = [backfill.Backfill(run) for run in runs]
        except (ConfigurationError, FieldError, ValueError, OSError, DjangoValidationError,
                DatabaseError) as exc:
            # One line, no traceback; a database error's text is cut short (it may quote data).
            raise CommandError(str(exc).splitlines()[0][:300], returncode=2) from None
        if options["dry_run"]:
            for run in runs:
                self.dry_run(run)
            return
        if options["in_workers"] or runs[0].ranges is not None:
            for run in runs:
                self.queue(run, options["concurrency"] or 4)
            return
        for job in jobs:
            run = job.run
            self.catch_signals(job)
            done = run.sent + run.skipped + run.failed
            with self.progress(run.total, done, options["quiet"]) as advance:
                try:
                    job.execute(progress=advance, concurrency=options["concurrency"] or 1)
                except BaseException:
                    run.status = BackfillRun.FAILED
                    run.save(update_fields=["status"])
                    self.stderr.write(f"Backfill #{run.pk} crashed; continue with: "
                                      f"manage.py cio_backfill --resume {run.pk}")
                    raise
            self.summary(run)
            if run.status == BackfillRun.STOPPED:
                break
        self.verdict([job.run for job in jobs])

    def prepare(self, options: dict[str, Any]) -> list[BackfillRun]:
        if options["rate_share"] is not None and not 0 < options["rate_share"] <= 1:
            raise ValueError("--rate-share must be above 0 and at most 1")
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise ValueError("--batch-size must be at least 1")
        if options["concurrency"] is not None and options["concurrency"] < 1:
            raise ValueError("--concurrency must be at least 1")
        if options["in_workers"] and options["ids_from"]:
            raise ValueError("--async sends pk ranges: not with --ids-from")
        given = {key: options[key] for key in ("batch_size", "rate_share", "dedup")
                 if options[key] is not None}
        workspaces = get_settings().workspace_names
        if options["workspace"] is not None:
            get_settings(options["workspace"])  # an unknown name is a usage error
            workspaces = (options["workspace"],)
        if options["resume"]:
            wanted = None if options["resume"] == "last" else _run_id(options["resume"])
            return [backfill.resume(wanted, in_workers=options["in_workers"],
                                    claim=not options["dry_run"], **given)]
        if options["all"]:
            labels = backfill.registered_labels()
        elif options["label"]:
            labels = [options["label"]]
        else:
            raise ValueError("name a model (app_label.Model), --all, or --resume a run")
        filters = dict(_pair(where) for where in options["where"])
        since = _moment(options["since"]) if options["since"] else None
        return [backfill.new_run(label, filters, since, options["ids_from"], workspace=workspace,
                                 **given)
                for label in labels for workspace in workspaces]  # saved when they start

    def stop_run(self, pk: int) -> None:
        backfill.stop(pk)
        self.stdout.write(f"Backfill #{pk} stops after its current pages; continue with: "
                          f"manage.py cio_backfill --resume {pk}")

    def queue(self, run: BackfillRun, parts: int) -> None:
        """An --async run: its pk ranges (cut now, or kept from before) go to the workers."""
        try:
            ranges = backfill.queue(run, parts)
        except Exception as exc:  # the broker: a resume queues the ranges again
            raise CommandError(f"cannot queue backfill #{run.pk} ({type(exc).__name__}); "
                               f"when the broker is back: manage.py cio_backfill --resume "
                               f"{run.pk}", returncode=1) from None
        self.stdout.write(
            f"Backfill #{run.pk} of {run.model}: {run.total:,} row(s) queued in "
            f"{ranges} range(s) on {get_settings(backfill.workspace_of(run)).queue!r}. "
            "Follow it with "
            f"manage.py cio_status or the admin; stop it with manage.py cio_backfill --stop "
            f"{run.pk}.")

    def dry_run(self, run: BackfillRun) -> None:
        plan = backfill.plan(run)
        self.stdout.write(f"{run.total:,} row(s) of {run.model} would be sent. For example:")
        # Real person ids on the operator's terminal; hashes where the output may be kept.
        with showing_ids() if self.stdout.isatty() else contextlib.nullcontext():
            for op in plan.sample:
                self.stdout.write(f"  {op!r}")
        self.stdout.write(f"At least {plan.requests:,} request(s): about {plan.seconds:,.0f} s "
                          f"at the configured limit, plus reading the rows.")

    def catch_signals(self, job: backfill.Backfill) -> None:
        def stop(signum: int, frame: Any) -> None:
            job.stop.set()
            self.stderr.write("Stopping after the current batch ...")

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def progress(self, total: int, done: int, quiet: bool) -> Any:
        if quiet:
            return _Silent()
        if sys.stderr.isatty():
            return _Bar(tqdm(total=total, initial=done, unit="row", dynamic_ncols=True))
        return _Lines(self.stderr, total, done)

    def summary(self, run: BackfillRun) -> None:
        self.stdout.write(f"Backfill #{run.pk} of {run.model}: {run.status}. {run.sent:,} sent, "
                          f"{run.skipped:,} skipped, {run.failed:,} failed of {run.total:,}.")

    def verdict(self, runs: list[BackfillRun]) -> None:
        stopped = [run for run in runs if run.status == BackfillRun.STOPPED]
        if stopped:
            untouched = [run.model for run in runs if run.pk is None]
            then = f"; then back up: {', '.join(untouched)}" if untouched else ""
            raise CommandError(f"stopped; continue with: manage.py cio_backfill --resume "
                               f"{stopped[0].pk}{then}", returncode=1)
        failed = sum(run.failed for run in runs)
        if failed:
            raise CommandError(f"{failed} row(s) failed: those Customer.io refused are dead "
                               f"letters (manage.py cio_status, cio_replay); rows that could "
                               f"not become an identify are logged with their pk",
                               returncode=1)


def _run_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--resume wants a run id, got {text!r}") from None


def _moment(text: str) -> datetime:
    """An ISO 8601 date or datetime, in the current time zone when it names none."""
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        if day is None:
            raise ValueError(f"--since wants an ISO 8601 date or datetime, got {text!r}")
        moment = datetime.combine(day, datetime.min.time())
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def _pair(where: str) -> tuple[str, str]:
    field, sep, value = where.partition("=")
    if not sep or not field:
        raise ValueError(f"--where wants FIELD=VALUE, got {where!r}")
    return field, value


class _Silent:
    def __enter__(self) -> Any:
        return lambda rows: None

    def __exit__(self, *exc: Any) -> None:
        pass


class _Bar:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __enter__(self) -> Any:
        return self.bar.update

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


class _Lines:
    """Progress as a line every few seconds, for logs (not a terminal)."""

    def __init__(self, out: Any, total: int, done: int) -> None:
        self.out, self.total, self.done = out, total, done
        self.started = self.last = time.monotonic()
        self.start_done = done

    def __enter__(self) -> Any:
        return self.advance

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self.last >= 5 or self.done >= self.total:
            rate = (self.done - self.start_done) / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            self.out.write(f"{self.done:,}/{self.total:,} rows, {rate:,.0f} rows/s, "
                           f"about {left:,.0f} s left")
            self.last = now

    def __exit__(self, *exc: Any) -> None:
        pass
