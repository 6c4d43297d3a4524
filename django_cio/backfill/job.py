"""A backfill run in one process: existing rows of a registered model to Customer.io, in
bulk, resumable.

Rows are read by keyset pagination on the primary key (``pk > last``, never OFFSET, one page
in memory at a time), turned into identifies by the model's registration (the attributes live
saves send), and delivered like the workers deliver: packed into v2 batches, under the
workspace's shared rate limit (of which ``rate_share`` at most), 207s and exhausted retries to
dead letters. After each page Customer.io acknowledged, the ``BackfillRun`` records the last pk,
so a stopped or crashed run resumes where it was, skipping nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Any

from django.apps import apps
from django.db import connections, models
from django.utils import timezone

from ..delivery.engine import MAX_LIMITER_WAIT, Delivery
from ..exceptions import ConfigurationError
from ..models import BackfillRun
from ..operations import Operation
from ..privacy import safe_reason
from ..ratelimit import RateLimiter, get_limiter
from ..registry import identify_op, registry
from ..signals import OpResult

logger = logging.getLogger("django_cio")

DEFAULT_OPTIONS = {"batch_size": 1000, "rate_share": 1.0, "dedup": False}
# A running backfill touches its run this often; one untouched for LEASE seconds is taken for
# dead, and --resume may pick it up.
HEARTBEAT = 10
LEASE = 60
# Longest an --async task waits for a retry inside the worker; longer, the page goes back to
# the broker with a countdown.
MAX_HOLD = MAX_LIMITER_WAIT


class ShareOfLimit:
    """At most ``share`` of the workspace's limit for backfills (a limit of their own, shared
    by every backfill of the workspace), inside the workspace's limit, which live traffic
    shares: together they never pass ``RATE_LIMIT``, and what backfills leave is live
    traffic's. A patient one (the command) waits as long as it takes; a Celery task is not
    patient, so that it never holds a worker live traffic needs."""

    def __init__(self, shared: RateLimiter, share: float, patient: bool = True) -> None:
        self.shared, self.patient = shared, patient
        self.own = None if share >= 1 else RateLimiter(
            f"{shared.key}:backfill", shared.interval / share, shared.client,
            shared.local.interval / share,
        )

    def acquire(self, max_wait: float = float("inf")) -> None:
        wait = float("inf") if self.patient else max_wait
        if self.own is not None:
            self.own.acquire(wait)
        self.shared.acquire(wait)


def resolve_model(label: str) -> type[models.Model]:
    """``app_label.Model`` of a registered model, or ``ConfigurationError`` saying why not."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise ConfigurationError(f"no model {label!r} (use app_label.Model)") from None
    if registry.customer_for(model) is None:
        if registry.events_for(model):
            raise ConfigurationError(
                f"{label} is registered with register_event: a backfill sends people (models "
                "registered with django_cio.register), not past events; backfill the model "
                "of the people its events belong to")
        raise ConfigurationError(f"{label} is not registered with django_cio.register")
    if getattr(model._meta, "is_composite_pk", False):  # Django 5.2+
        raise ConfigurationError(f"{label} has a composite primary key: not supported")
    return model


def registered_labels() -> list[str]:
    """``app_label.Model`` of every registered model, proxies left out (their rows are their
    concrete model's rows)."""
    return sorted(model._meta.label for model in registry.customers if not model._meta.proxy)


def since_field(model: type[models.Model]) -> str:
    """The field ``--since`` filters on: the registration's ``since_field``, else a usual one."""
    customer = registry.customer_for(model)
    chosen = getattr(customer, "since_field", None)
    names = {field.name for field in model._meta.get_fields()}
    for name in ([chosen] if chosen else ["date_joined", "created_at", "created"]):
        if name in names:
            return name
    raise ConfigurationError(f"--since: set since_field on the registration of "
                             f"{model._meta.label} (no date_joined, created_at or created)")


def queryset(model: type[models.Model], filters: dict[str, Any]) -> models.QuerySet[Any]:
    """The rows a run covers: ``filters`` are field lookups, e.g. ``{"is_active": "1"}``."""
    return model._default_manager.filter(**filters).order_by("pk")


def start(label: str, filters: dict[str, Any], **options: Any) -> BackfillRun:
    model = resolve_model(label)
    total = queryset(model, filters).count()
    return BackfillRun.objects.create(model=label, filters=filters, total=total,
                                      options={**DEFAULT_OPTIONS, **options})


def read_ids(path: str) -> Iterator[str]:
    """The primary keys of an ids file, one a line, blank lines left out, read lazily."""
    with open(path) as lines:
        for line in lines:
            if line.strip():
                yield line.strip()


def count_ids(model: type[models.Model], path: str) -> int:
    """How many ids the file lists; ``ConfigurationError`` names the first line that is not
    a primary key of ``model``."""
    field = model._meta.pk
    number = 0
    for number, pk in enumerate(read_ids(path), 1):
        try:
            field.to_python(pk)
        except Exception:
            raise ConfigurationError(f"--ids-from: id {number} of {path} is not a primary key "
                                     f"of {model._meta.label}") from None
    return number


def json_pk(pk: Any) -> Any:
    return pk if isinstance(pk, (int, str)) else str(pk)  # UUIDs, too


@dataclass
class RowPage:
    rows: list[Any]
    size: int  # what the run counts: rows read, or ids of the file looked up
    mark: Any  # the checkpoint once the page is acknowledged (a pk, or ids done)


class Backfill:
    """One run's work: pages of rows, delivered and checkpointed in order."""

    def __init__(self, run: BackfillRun, patient: bool = True) -> None:
        self.run = run
        options = {**DEFAULT_OPTIONS, **run.options}
        self.batch_size, self.dedup = options["batch_size"], options["dedup"]
        self.model = resolve_model(run.model)
        self.limiter = ShareOfLimit(get_limiter(), options["rate_share"], patient)
        self.stop = threading.Event()

    def rows(self, after: Any = None, upto: Any = None) -> list[Any]:
        """The next page of rows with ``after < pk <= upto`` (either end open when None)."""
        rows = queryset(self.model, self.run.filters)
        if after is not None:
            rows = rows.filter(pk__gt=after)
        if upto is not None:
            rows = rows.filter(pk__lte=upto)
        return list(rows[:self.batch_size])

    def pages(self) -> Iterator[RowPage]:
        if self.run.ids_file:
            yield from self._id_pages()
            return
        last = self.run.last_pk
        while page := self.rows(after=last):
            last = json_pk(page[-1].pk)
            yield RowPage(page, len(page), last)

    def _id_pages(self) -> Iterator[RowPage]:
        ids = read_ids(self.run.ids_file)
        done = self.run.ids_done
        for _ in islice(ids, done):  # acknowledged before a stop
            pass
        rows = queryset(self.model, self.run.filters)
        while chunk := list(islice(ids, self.batch_size)):
            done += len(chunk)
            yield RowPage(list(rows.filter(pk__in=chunk)), len(chunk), done)

    def build(self, rows: list[Any]) -> tuple[list[tuple[int, Operation]], list[int]]:
        """The rows' identifies, each with its row's position, and the positions of rows that
        could not become one (logged by pk, with the field at fault and never its value)."""
        built: list[tuple[int, Operation]] = []
        invalid: list[int] = []
        for position, row in enumerate(rows):
            try:
                op = identify_op(row, created=False)
            except Exception as exc:
                invalid.append(position)
                logger.error("customerio: backfill %s row pk=%s not sent (%s)",
                             row._meta.label, row.pk, safe_reason(exc))
                continue
            if op is not None:
                built.append((position, op))
        return built, invalid

    def deliver(self, ops: list[Operation], failures: int = 0, max_hold: float = float("inf"),
                ) -> tuple[list[OpResult], list[Operation], tuple[int, float] | None]:
        """Deliver ops until each is sent or failed: transient errors and 429s wait here, up
        to ``max_hold`` seconds in all, so that the checkpoint only moves past acknowledged
        rows. Returns the results; if it gave up waiting, also the ops still to send (the
        tail of ``ops``) and (failures, wait)."""
        results: list[OpResult] = []
        deadline = time.monotonic() + max_hold  # for all the waits together (a 429 storm)
        while ops:
            delivery = Delivery([], failures, ops=ops, dedup=self.dedup, limiter=self.limiter,
                                hold_retries=True)
            delivery.run()
            results += [r for r in delivery.results if r.status != "retrying"]
            if delivery.retry is None:
                break
            failures, wait = delivery.retry
            if time.monotonic() + wait > deadline:
                return results, delivery.pending, delivery.retry
            time.sleep(wait)
            ops = delivery.pending
        return results, [], None

    def execute(self, progress: Callable[[int], None] = lambda rows: None,
                concurrency: int = 1) -> BackfillRun:
        """Deliver page after page until done or ``stop`` is set (after the pages in flight).

        This thread reads and builds pages; up to ``concurrency`` pages are sent at once (to
        keep the limit full when Customer.io is slow). The checkpoint follows the pages in
        order: it only ever covers pages that are all acknowledged."""
        run = self.run
        if run.pk is None:  # a resumed run was claimed as running already
            run.save()
        in_flight: deque[tuple[Future[list[OpResult]], RowPage, int, int]] = deque()
        finished = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(finished,), daemon=True)
        heartbeat.start()
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="cio-backfill") as senders:
                for page in self.pages():
                    built, invalid = self.build(page.rows)
                    ops = [op for _, op in built]
                    in_flight.append((senders.submit(self._send, ops), page, len(ops),
                                      len(invalid)))
                    while len(in_flight) >= concurrency:
                        self._checkpoint(*in_flight.popleft(), progress)
                    if self.stop.is_set():
                        break
                while in_flight:
                    self._checkpoint(*in_flight.popleft(), progress)
        finally:
            finished.set()
            heartbeat.join()
        run.status = BackfillRun.STOPPED if self.stop.is_set() else BackfillRun.DONE
        run.updated_at = timezone.now()
        run.save(update_fields=["status", "updated_at"])
        return run

    def _heartbeat(self, finished: threading.Event) -> None:
        """Show the run is alive (``--resume`` leaves a live run alone) and obey ``--stop``."""
        rows = BackfillRun.objects.filter(pk=self.run.pk)
        while not finished.wait(HEARTBEAT):
            try:
                rows.update(updated_at=timezone.now())
                if rows.filter(status=BackfillRun.STOPPING).exists():
                    self.stop.set()
            except Exception as exc:  # beat again next time, on a new connection
                logger.warning("customerio: backfill heartbeat failed (%s)", type(exc).__name__)
            finally:
                connections.close_all()  # this thread's own

    def _send(self, ops: list[Operation]) -> list[OpResult]:
        try:
            return self.deliver(ops)[0]
        finally:
            connections.close_all()  # this sender thread's own (dead letters), not the reader's

    def _checkpoint(self, sending: Future[list[OpResult]], page: RowPage, built: int,
                    invalid: int, progress: Callable[[int], None]) -> None:
        run = self.run
        tally(run, page, built, invalid, sending.result())
        if run.ids_file:
            run.ids_done = page.mark
        else:
            run.last_pk = page.mark
        run.updated_at = timezone.now()
        # Not the status: a --stop from elsewhere must stay.
        run.save(update_fields=["sent", "failed", "skipped", "last_pk", "ids_done",
                                "updated_at"])
        progress(page.size)


def tally(run: BackfillRun, page: RowPage, built: int, invalid: int,
          results: list[OpResult]) -> None:
    """Count a page's rows: each one sent, skipped (no identify, or already known) or failed."""
    statuses = [result.status for result in results]
    run.sent += statuses.count("sent")
    run.failed += statuses.count("failed") + invalid
    run.skipped += page.size - built - invalid + statuses.count("skipped")


def alive(run: BackfillRun) -> bool:
    """Whether a process may still be working on a run: one running (or asked to stop) that
    a heartbeat or a page touched in the last LEASE seconds."""
    recent = timezone.now() - run.updated_at < timedelta(seconds=LEASE)
    return recent and run.status in (BackfillRun.RUNNING, BackfillRun.STOPPING)
