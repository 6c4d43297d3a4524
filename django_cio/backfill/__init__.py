"""Existing rows of a registered model to Customer.io, in bulk, resumable: in one process
(``job``) or in the Celery workers (``workers``, ``cio_backfill --async``); ``runs`` makes,
resumes, stops and plans them."""

from .job import Backfill
from .runs import (
    DEFAULT_OPTIONS,
    LEASE,
    Plan,
    alive,
    busy,
    count_ids,
    new_run,
    plan,
    queryset,
    read_ids,
    registered_labels,
    resolve_model,
    resume,
    since_field,
    start,
    stop,
    workspace_of,
)
from .workers import deliver_page, queue, ranges

__all__ = [
    "DEFAULT_OPTIONS", "LEASE", "Backfill", "Plan", "alive", "busy", "count_ids", "deliver_page",
    "new_run", "plan", "queryset", "queue", "ranges", "read_ids", "registered_labels",
    "resolve_model", "resume", "since_field", "start", "stop", "workspace_of",
]
