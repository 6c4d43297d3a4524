"""A backfill run in the Celery workers (``cio_backfill --async``): the rows cut into pk
ranges, each range sent by a chain of Celery tasks, one page per task (no worker is held
longer than a page).

A task's identity is (run, range): it reads the range's checkpoint, sends the next page and
moves the checkpoint only if it is still where it was read, so two copies of a task (a
redelivery) end as one chain.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject
from django.db import router, transaction
from django.utils import timezone

from ..broker.messages import redelivered
from ..broker.publish import BACKFILL_PAGE, publish_task
from ..conf import DEFAULT_WORKSPACE, get_settings
from ..delivery.retry import MAX_COUNTDOWN, backoff, too_many_deliveries
from ..models import BackfillRun
from .job import MAX_HOLD, Backfill, RowPage, json_pk, tally
from .runs import queryset, resolve_model, workspace_of

logger = logging.getLogger("django_cio")


def ranges(run: BackfillRun, parts: int) -> list[list[Any]]:
    """``parts`` pk ranges ``[after, upto]`` of about equal size, reading only the pks."""
    rows = queryset(resolve_model(run.model), run.filters)
    if run.last_pk is not None:  # a run stopped in a process goes on in the workers
        rows = rows.filter(pk__gt=run.last_pk)
    step = max(1, -(-rows.count() // parts))
    pks = rows.values_list("pk", flat=True).iterator(chunk_size=10_000)
    ends: list[Any] = []
    last = None
    for number, pk in enumerate(pks, 1):
        last = json_pk(pk)
        if number % step == 0:
            ends.append(last)
    if last is not None and (not ends or ends[-1] != last):
        ends.append(last)
    return [[ends[n - 1] if n else run.last_pk, end] for n, end in enumerate(ends)]


def queue(run: BackfillRun, parts: int) -> int:
    """Send ``run``'s pk ranges (cut now, or kept from before) to the workers, a first page
    task for each; return how many ranges it has. If the broker fails, the run is left
    stopped (a resume queues it again) and the error raised."""
    if run.ranges is None:
        run.ranges = ranges(run, parts)
        if not run.ranges:
            run.status = BackfillRun.DONE
        run.save()
    try:
        for index, (after, upto) in enumerate(run.ranges):
            if after != upto:
                publish_task(BACKFILL_PAGE, (run.pk, index), workspace=workspace_of(run))
    except Exception:
        run.status = BackfillRun.STOPPED
        run.save(update_fields=["status"])
        raise
    return len(run.ranges)


def send_range_page(run_id: int, index: int, failures: int) -> tuple[int, float] | None:
    """Send the next page of range ``index`` of an --async run and checkpoint what
    Customer.io acknowledged. Returns when to go on, as (failures, countdown), or None when
    the range is done (or the run stopped, or another copy of this task has the page)."""
    alias = router.db_for_write(BackfillRun)  # not a replica that may lag behind checkpoints
    run = BackfillRun.objects.using(alias).filter(pk=run_id, status=BackfillRun.RUNNING).first()
    if run is None or not run.ranges:
        return None
    after, upto = run.ranges[index]
    if after == upto:
        return None
    BackfillRun.objects.using(alias).filter(pk=run_id).update(updated_at=timezone.now())
    job = Backfill(run, patient=False)
    config = get_settings(job.workspace)
    if not config.batch:  # a request per row: no more rows than the limit sends in MAX_HOLD
        job.batch_size = min(job.batch_size, max(1, int(config.rate.per_second * MAX_HOLD)))
    rows = job.rows(after, upto)
    built, invalid = job.build(rows)
    results, pending, retry = job.deliver([op for _, op in built], failures, MAX_HOLD)
    # What was acknowledged is the rows before the first op still to send.
    positions = {id(op): position for position, op in built}
    cut = positions.get(id(pending[0]), 0) if pending else len(rows)
    # No rows left: the range's last rows were deleted since the split.
    mark = json_pk(rows[cut - 1].pk) if cut else (None if rows else upto)
    if mark is not None:
        done = [(position, op) for position, op in built if position < cut]
        acknowledged = {id(op) for _, op in done}
        page = RowPage(rows[:cut], cut, mark)
        if not _checkpoint_range(alias, run_id, index, after, page,
                                 built=done, invalid=sum(p < cut for p in invalid),
                                 results=[r for r in results if id(r.op) in acknowledged]):
            return None
    if retry is not None:
        return retry
    return None if mark == upto else (0, 0.0)


def _checkpoint_range(alias: str, run_id: int, index: int, after: Any, page: RowPage,
                      **counts: Any) -> bool:
    """Move range ``index`` from ``after`` to the page's mark, unless another copy of the
    task did (then False: that copy goes on with the range)."""
    with transaction.atomic(using=alias):
        run = BackfillRun.objects.using(alias).select_for_update().get(pk=run_id)
        if run.status != BackfillRun.RUNNING or run.ranges[index][0] != after:
            return False
        run.ranges[index][0] = page.mark
        tally(run, page, **counts)
        if all(start == end for start, end in run.ranges):
            run.status = BackfillRun.DONE
        run.updated_at = timezone.now()
        run.save()
    return True



def deliver_page(request: Any, run_id: int, index: int, failures: int = 0) -> None:
    """The ``backfill_page`` task: the next page of range ``index``, then the next one as a
    new message (so no worker is held for a whole range)."""

    def give_up() -> None:
        BackfillRun.objects.filter(pk=run_id).update(status=BackfillRun.FAILED)
        logger.error("customerio: backfill #%s failed; continue with: manage.py "
                     "cio_backfill --resume %s", run_id, run_id)

    run = BackfillRun.objects.filter(pk=run_id).first()
    workspace = workspace_of(run) if run is not None else DEFAULT_WORKSPACE
    config = get_settings(workspace)
    if redelivered(request) and too_many_deliveries(request.id):
        give_up()  # a page that kills its worker
        return
    try:
        again = send_range_page(run_id, index, failures)
    except Exception as exc:  # the database down, a bug: the page again, later
        logger.error("customerio: backfill #%s page failed (%s)", run_id, type(exc).__name__)
        if failures + 1 > config.max_retries:
            give_up()
            return
        again = (failures + 1, min(backoff(failures + 1, config), MAX_COUNTDOWN))
    if again is None:
        return
    try:
        publish_task(BACKFILL_PAGE, (run_id, index, again[0]), workspace=workspace,
                     countdown=min(again[1], MAX_COUNTDOWN) or None)
    except Exception as exc:  # the broker down: this message again, later; nothing is lost
        raise Reject(type(exc).__name__, requeue=True) from None


