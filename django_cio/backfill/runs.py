"""Backfill runs: made, resumed (claimed from a stopped or dead process), stopped, and
planned (what a dry run prints). ``cio_backfill`` parses its arguments and calls these."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from ..conf import get_settings
from ..exceptions import ConfigurationError
from ..models import BackfillRun
from ..operations import Identify
from ..registry import identify_op
from .job import DEFAULT_OPTIONS, LEASE, alive, count_ids, queryset, resolve_model, since_field


def new_run(label: str, filters: dict[str, Any], since: datetime | None = None,
            ids_file: str | None = None, **options: Any) -> BackfillRun:
    """An unsaved run of ``label``'s rows (saved when it starts); a bad filter, model or ids
    file fails here."""
    model = resolve_model(label)
    filters = dict(filters)
    if since is not None:
        filters[f"{since_field(model)}__gte"] = since.isoformat()  # a string: kept as JSON
    run = BackfillRun(model=label, filters=filters, options={**DEFAULT_OPTIONS, **options})
    if ids_file is None:
        run.total = queryset(model, filters).count()
    else:
        queryset(model, filters).exists()
        run.ids_file = os.path.abspath(ids_file)  # a resume may run elsewhere
        run.total = count_ids(model, run.ids_file)
    return run


def resume(wanted: int | None = None, in_workers: bool = False, claim: bool = True,
           **options: Any) -> BackfillRun:
    """The run to continue (``wanted``, else the latest unfinished one), its options updated
    with ``options``; taken over (marked running) only if nothing works on it, unless
    ``claim`` is false (a dry run)."""
    runs = BackfillRun.objects.exclude(status=BackfillRun.DONE)
    if wanted is None:
        run = next((run for run in runs if not busy(run)), None)
    else:
        run = runs.filter(pk=wanted).first()
    if run is None:
        raise ConfigurationError("no backfill run to resume" if wanted is None
                                 else f"no unfinished backfill run {wanted}")
    if why := busy(run):
        raise ConfigurationError(why)
    if run.ids_file and (in_workers or run.ranges is not None):
        raise ConfigurationError("--async sends pk ranges: not with --ids-from")
    run.options.update(options)
    if not claim:
        return run
    taken = BackfillRun.objects.filter(pk=run.pk, updated_at=run.updated_at).update(
        status=BackfillRun.RUNNING, updated_at=timezone.now(), options=run.options)
    if not taken:
        raise ConfigurationError(f"backfill #{run.pk} was just resumed elsewhere")
    run.refresh_from_db()
    return run


def busy(run: BackfillRun) -> str:
    """Why a run may not be resumed now ("" if it may)."""
    if run.ranges is not None and run.status == BackfillRun.RUNNING:
        # Its tasks may wait on the broker a while, touching nothing.
        return f"backfill #{run.pk} runs in the workers; stop it with --stop {run.pk} first"
    if alive(run):
        return (f"backfill #{run.pk} is {run.status} (touched in the last {LEASE} s); "
                f"stop it with --stop {run.pk}, or resume it a minute after its process died")
    return ""


def stop(pk: int) -> None:
    """Ask a running run to stop after its current pages (``resume`` continues it)."""
    run = BackfillRun.objects.filter(pk=pk, status=BackfillRun.RUNNING).first()
    if run is None:
        raise ConfigurationError(f"no running backfill run {pk}")
    # A process stops when its heartbeat sees STOPPING, then marks the run STOPPED. The
    # tasks of an --async run stop at their next page, and it may be resumed at once:
    # copies of a task end as one chain.
    status = BackfillRun.STOPPED if run.ranges is not None else BackfillRun.STOPPING
    BackfillRun.objects.filter(pk=pk).update(status=status, updated_at=timezone.now())


@dataclass
class Plan:
    """What a run would do: a few of its ops, and the requests and time the limit implies."""

    sample: list[Identify | None]
    requests: int
    seconds: float


def plan(run: BackfillRun) -> Plan:
    rows = queryset(resolve_model(run.model), run.filters)[:3]
    options = {**DEFAULT_OPTIONS, **run.options}
    requests = max(1, -(-run.total // options["batch_size"]))
    seconds = requests / (get_settings().rate.per_second * options["rate_share"])
    return Plan([identify_op(row, created=False) for row in rows], requests, seconds)
