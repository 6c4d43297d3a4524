"""Existing rows of a registered model to Customer.io, in bulk, resumable: in one process
(``job``) or in the Celery workers (``workers``, ``cio_backfill --async``)."""

from .job import (
    DEFAULT_OPTIONS,
    LEASE,
    Backfill,
    alive,
    count_ids,
    queryset,
    read_ids,
    registered_labels,
    resolve_model,
    since_field,
    start,
)
from .workers import deliver_page, queue, ranges

__all__ = [
    "DEFAULT_OPTIONS", "LEASE", "Backfill", "alive", "count_ids", "deliver_page", "queryset",
    "queue", "ranges", "read_ids", "registered_labels", "resolve_model", "since_field", "start",
]
