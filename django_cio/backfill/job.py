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
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from django.db import connections
from django.utils import timezone

from ..delivery.engine import Delivery
from ..models import BackfillRun
from ..operations import Operation
from ..privacy import safe_reason
from ..ratelimit import RateLimiter, get_limiter
from ..routing import route
from ..signals import OpResult
from .rows import row_ops
from .runs import DEFAULT_OPTIONS, queryset, read_ids, resolve_model

logger = logging.getLogger("django_cio")

# A running backfill touches its run this often (runs.LEASE: when it counts as dead).
HEARTBEAT = 10
# Longest an --async task waits for a retry inside the worker; longer, the page goes back to
# the broker with a countdown.
MAX_HOLD = 5


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
        self.workspace = options["workspace"]
        self.model = resolve_model(run.model)
        self.limiter = ShareOfLimit(get_limiter(self.workspace), options["rate_share"], patient)
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
        """The ops of the rows (``rows.row_ops``) that go to the run's workspace (routed as
        live traffic is), each with its row's position, and the positions of rows that could
        not become ops (logged by pk, with the field at fault and never its value)."""
        built: list[tuple[int, Operation]] = []
        invalid: list[int] = []
        for position, row in enumerate(rows):
            try:
                ops = [op for op in row_ops(row) if route(op).workspace == self.workspace]
            except Exception as exc:  # (another workspace's ops: its own run sends them)
                invalid.append(position)
                logger.error("customerio: backfill %s row pk=%s not sent (%s)",
                             row._meta.label, row.pk, safe_reason(exc))
                continue
            built += [(position, op) for op in ops]
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
            delivery = Delivery([], failures, workspace=self.workspace, ops=ops,
                                dedup=self.dedup, limiter=self.limiter, hold_retries=True)
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
        in_flight: deque[tuple[Future[list[OpResult]], RowPage, list[tuple[int, Operation]],
                               int]] = deque()
        finished = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(finished,), daemon=True)
        heartbeat.start()
        try:
            with ThreadPoolExecutor(concurrency, thread_name_prefix="cio-backfill") as senders:
                for page in self.pages():
                    built, invalid = self.build(page.rows)
                    ops = [op for _, op in built]
                    in_flight.append((senders.submit(self._send, ops), page, built,
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

    def _checkpoint(self, sending: Future[list[OpResult]], page: RowPage,
                    built: list[tuple[int, Operation]], invalid: int,
                    progress: Callable[[int], None]) -> None:
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


def tally(run: BackfillRun, page: RowPage, built: list[tuple[int, Operation]], invalid: int,
          results: list[OpResult]) -> None:
    """Count a page's rows: each one failed (an op of it failed), sent (an op of it went), or
    skipped (nothing to send, or all of it already known)."""
    row_of = {id(op): position for position, op in built}
    statuses: dict[int, set[str]] = defaultdict(set)
    for result in results:
        statuses[row_of[id(result.op)]].add(result.status)
    failed = sum("failed" in row for row in statuses.values())
    sent = sum("sent" in row and "failed" not in row for row in statuses.values())
    run.sent += sent
    run.failed += failed + invalid
    run.skipped += page.size - sent - failed - invalid
