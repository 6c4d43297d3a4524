"""Backfill runs: what a run covers (a registered model's rows, filtered, or an ids file),
and runs made, resumed (claimed from a stopped or dead process), stopped and planned (what a
dry run prints). ``job`` carries a run out; ``cio_backfill`` parses its arguments and calls
these."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.db import models
from django.utils import timezone

from ..conf import DEFAULT_WORKSPACE, get_settings
from ..exceptions import ConfigurationError
from ..models import BackfillRun
from ..operations import Operation
from ..registry import registry
from .rows import backfillable, backfillable_models, row_ops

DEFAULT_OPTIONS = {"batch_size": 1000, "rate_share": 1.0, "dedup": False,
                   "workspace": DEFAULT_WORKSPACE}
# A run untouched (by its process's heartbeat or a page) for LEASE seconds is taken for dead,
# and --resume may pick it up.
LEASE = 60


def resolve_model(label: str) -> type[models.Model]:
    """``app_label.Model`` of a registered model, or ``ConfigurationError`` saying why not."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        raise ConfigurationError(f"no model {label!r} (use app_label.Model)") from None
    if not backfillable(model):
        if registry.events_for(model):
            raise ConfigurationError(
                f"{label} is registered with register_event without a timestamp: a backfill "
                "sends past events with their own time (register_event(..., on='create', "
                "timestamp='created_at'))")
        raise ConfigurationError(f"{label} is not registered with django_cio.register, "
                                 f"register_object or register_event")
    if getattr(model._meta, "is_composite_pk", False):  # Django 5.2+
        raise ConfigurationError(f"{label} has a composite primary key: not supported")
    return model


def registered_labels() -> list[str]:
    """``app_label.Model`` of every model a backfill can send."""
    return sorted(model._meta.label for model in backfillable_models())


def since_field(model: type[models.Model]) -> str:
    """The field ``--since`` filters on: the registration's ``since_field``, else a usual one."""
    customer = registry.customer_for(model)
    timestamps = [event.timestamp for event in registry.events_for(model)
                  if isinstance(event.timestamp, str)]
    chosen = getattr(customer, "since_field", None) or next(iter(timestamps), None)
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

    sample: list[Operation]
    requests: int
    seconds: float


def workspace_of(run: BackfillRun) -> str:
    """The workspace a run fills (runs from before there were several: the default one)."""
    return str({**DEFAULT_OPTIONS, **run.options}["workspace"])


def plan(run: BackfillRun) -> Plan:
    rows = queryset(resolve_model(run.model), run.filters)[:3]
    options = {**DEFAULT_OPTIONS, **run.options}
    requests = max(1, -(-run.total // options["batch_size"]))
    rate = get_settings(workspace_of(run)).rate.per_second
    seconds = requests / (rate * options["rate_share"])
    return Plan([op for row in rows for op in row_ops(row)], requests, seconds)


def alive(run: BackfillRun) -> bool:
    """Whether a process may still be working on a run: one running (or asked to stop) that
    a heartbeat or a page touched in the last LEASE seconds."""
    recent = timezone.now() - run.updated_at < timedelta(seconds=LEASE)
    return recent and run.status in (BackfillRun.RUNNING, BackfillRun.STOPPING)
