"""Existing rows of a registered model to Customer.io, in bulk, resumable.

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
from typing import Any

from django.apps import apps
from django.db import connections, models
from django.utils import timezone

from .exceptions import ConfigurationError, ValidationError
from .models import BackfillRun
from .operations import Operation
from .ratelimit import RateLimiter, get_limiter
from .registry import _identify, registry
from .tasks import Delivery

logger = logging.getLogger("django_cio")


class ShareOfLimit:
    """At most ``share`` of the workspace's limit for backfills (a limit of their own, shared
    by every backfill of the workspace), inside the workspace's limit, which live traffic
    shares: together they never pass ``RATE_LIMIT``, and what backfills leave is live
    traffic's. It waits as long as it takes: a backfill is in no hurry."""

    def __init__(self, shared: RateLimiter, share: float) -> None:
        self.shared = shared
        self.own = None if share >= 1 else RateLimiter(
            f"{shared.key}:backfill", shared.interval / share, shared.client,
            shared.local.interval / share,
        )

    def acquire(self, max_wait: float = float("inf")) -> None:
        if self.own is not None:
            self.own.acquire()
        self.shared.acquire()


def resolve_model(label: str) -> type[models.Model]:
    """``app_label.Model`` of a registered model, or ``ConfigurationError`` saying why not."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise ConfigurationError(f"no model {label!r} (use app_label.Model)") from None
    if registry.customer_for(model) is None:
        raise ConfigurationError(f"{label} is not registered with django_cio.register")
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


def start(label: str, filters: dict[str, Any]) -> BackfillRun:
    model = resolve_model(label)
    total = queryset(model, filters).count()
    return BackfillRun.objects.create(model=label, filters=filters, total=total)


class Backfill:
    """One run's work: pages of rows, delivered and checkpointed in order."""

    def __init__(self, run: BackfillRun, batch_size: int = 1000, rate_share: float = 1.0,
                 dedup: bool = False) -> None:
        self.run, self.batch_size, self.dedup = run, batch_size, dedup
        self.model = resolve_model(run.model)
        self.limiter = ShareOfLimit(get_limiter(), rate_share)
        self.stop = threading.Event()

    def pages(self) -> Iterator[list[Any]]:
        rows = queryset(self.model, self.run.filters)
        last = self.run.last_pk
        while True:
            page = list((rows.filter(pk__gt=last) if last is not None else rows)
                        [:self.batch_size])
            if not page:
                return
            yield page
            last = page[-1].pk

    def build(self, page: list[Any]) -> tuple[list[Operation], int]:
        """The page's identifies, and how many rows could not become one (logged by pk, with
        the field at fault and never its value)."""
        ops: list[Operation] = []
        invalid = 0
        for row in page:
            try:
                op = _identify(row, created=False)
            except Exception as exc:
                invalid += 1
                reason = str(exc) if isinstance(exc, ValidationError) else type(exc).__name__
                logger.error("customerio: backfill row pk=%s not sent (%s)", row.pk, reason)
                continue
            if op is not None:
                ops.append(op)
        return ops, invalid

    def deliver(self, ops: list[Operation]) -> list[str]:
        """Deliver a page until every op is sent or failed: transient errors and 429s wait
        here, in the backfill, so the checkpoint only moves past acknowledged rows."""
        statuses: list[str] = []
        failures = 0
        while ops:
            delivery = Delivery([], failures, ops=ops, dedup=self.dedup, limiter=self.limiter,
                                hold_retries=True)
            delivery.run()
            statuses += [r.status for r in delivery.results if r.status != "retrying"]
            if delivery.retry is None:
                break
            failures, wait = delivery.retry
            time.sleep(wait)
            ops = delivery.pending
        return statuses

    def execute(self, progress: Callable[[int], None] = lambda rows: None,
                concurrency: int = 1) -> BackfillRun:
        """Deliver page after page until done or ``stop`` is set (after the pages in flight).

        This thread reads and builds pages; up to ``concurrency`` pages are sent at once (to
        keep the limit full when Customer.io is slow). The checkpoint follows the pages in
        order: it only ever covers pages that are all acknowledged."""
        run = self.run
        run.status = BackfillRun.RUNNING
        in_flight: deque[tuple[Future[list[str]], list[Any], int, int]] = deque()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="cio-backfill") as senders:
            for page in self.pages():
                ops, invalid = self.build(page)
                in_flight.append((senders.submit(self._send, ops), page, len(ops), invalid))
                while len(in_flight) >= concurrency:
                    self._checkpoint(*in_flight.popleft(), progress)
                if self.stop.is_set():
                    break
            while in_flight:
                self._checkpoint(*in_flight.popleft(), progress)
        run.status = BackfillRun.STOPPED if self.stop.is_set() else BackfillRun.DONE
        run.updated_at = timezone.now()
        run.save()
        return run

    def _send(self, ops: list[Operation]) -> list[str]:
        try:
            return self.deliver(ops)
        finally:
            connections.close_all()  # this sender thread's own (dead letters), not the reader's

    def _checkpoint(self, sending: Future[list[str]], page: list[Any], built: int,
                    invalid: int, progress: Callable[[int], None]) -> None:
        statuses = sending.result()
        run = self.run
        run.sent += statuses.count("sent")
        run.failed += statuses.count("failed") + invalid
        run.skipped += len(page) - built - invalid + statuses.count("skipped")
        pk = page[-1].pk
        run.last_pk = pk if isinstance(pk, (int, str)) else str(pk)  # UUIDs, too
        run.updated_at = timezone.now()
        run.save()
        progress(len(page))
