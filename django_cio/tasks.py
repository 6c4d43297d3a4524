"""Celery tasks, thin entry points like management commands: ``deliver`` sends a message's
ops to Customer.io (``delivery.engine``); ``backfill_page`` continues an ``--async`` backfill;
``relay_outbox`` publishes messages parked in the Outbox. Their names are fixed: messages
already queued must keep running.

Run a worker on the dedicated queue with one message in hand at a time::

    celery -A proj worker -Q customerio --prefetch-multiplier 1

``deliver`` acknowledges a message only once each op in it is sent, dead-lettered or handed to a
new message for retry (``acks_late``), and a worker that dies mid-message leaves it to be
redelivered (``reject_on_worker_lost``). No task acknowledges on a failure or a time limit.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .backfill import deliver_page
from .beat import RELAY_TASK, beat_schedule  # noqa: F401 - beat_schedule's old home
from .broker.relay import relay
from .delivery.engine import deliver_message
from .operations import Json


@shared_task(
    name="django_cio.tasks.deliver", bind=True, acks_late=True, reject_on_worker_lost=True,
    acks_on_failure_or_timeout=False, ignore_result=True, max_retries=None,
)
def deliver(self: Any, ops: list[Json], failures: int = 0) -> None:
    """Send ``ops`` (``Operation.to_dict()`` output); ``failures`` counts earlier attempts."""
    deliver_message(self, ops, failures)


@shared_task(name="django_cio.tasks.backfill_page", bind=True, acks_late=True,
             reject_on_worker_lost=True, acks_on_failure_or_timeout=False, ignore_result=True,
             max_retries=None)
def backfill_page(self: Any, run_id: int, index: int, failures: int = 0) -> None:
    """The next page of range ``index`` of a ``cio_backfill --async`` run, then the next one
    (as a new message, so no worker is held for a whole range)."""
    deliver_page(self.request, run_id, index, failures)


@shared_task(name=RELAY_TASK, ignore_result=True)
def relay_outbox(limit: int = 1000) -> int:
    """Publish due Outbox messages of every database that holds the table; return the count.
    Not needed: every worker relays the Outbox by itself (``broker.relay.OutboxRelay``)."""
    return relay(limit=limit)
