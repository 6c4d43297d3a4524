"""When to try again: backoff with jitter, retries on the broker or parked in the Outbox, and
the poison limit on messages whose workers keep dying."""

from __future__ import annotations

import logging
import random

from celery.exceptions import Reject
from django.core.cache import caches

from ..broker.outbox import park
from ..broker.publish import publish_ops
from ..conf import CIOSettings, get_settings
from ..operations import Json
from . import dead_letters

logger = logging.getLogger("django_cio")

# Waits longer than this are parked in the Outbox rather than held by the broker: a Redis
# broker redelivers a countdown longer than its visibility timeout, and RabbitMQ closes a
# channel that keeps a message unacknowledged past its consumer_timeout.
MAX_COUNTDOWN = 60
# A message whose worker died this many times (an op that crashes or starves the worker)
# becomes dead letters instead of killing workers forever.
MAX_DELIVERIES = 5
_DELIVERIES_TTL = 24 * 3600


def schedule(ops: list[Json], failures: int, wait: float) -> None:
    """A retry: on the broker with a countdown, or parked in the Outbox when the wait is long
    or the broker is down. Raises if neither takes it, so the message is not acknowledged."""
    if wait <= MAX_COUNTDOWN:
        try:
            publish_ops(ops, failures=failures, countdown=wait)
            return
        except Exception as exc:  # the Outbox below takes it
            logger.warning("customerio: broker unavailable for a retry (%s)", type(exc).__name__)
    park(ops, failures=failures, delay=wait)


def backoff(failures: int, config: CIOSettings) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, 2 ** failures)] seconds."""
    return random.uniform(0, min(config.retry_backoff_max, 2.0 ** failures))


def retry_after_crash(ops: list[Json], failures: int, error: str) -> None:
    """Ops a crashed delivery did not send: a retry, or dead letters when out of retries."""
    if not ops:
        return
    config = get_settings()
    try:
        if failures + 1 > config.max_retries:
            dead_letters.store([(raw, f"crashed ({error})", None) for raw in ops], failures + 1)
        else:
            # Straight to the broker: the Outbox may be what is down.
            publish_ops(ops, failures=failures + 1,
                                       countdown=min(backoff(failures + 1, config), MAX_COUNTDOWN))
    except Exception:
        # Nowhere to put it: give the message back to the broker rather than lose it.
        raise Reject(error, requeue=True) from None


def too_many_deliveries(task_id: str) -> bool:
    """Count redeliveries of a message in the cache; if the cache is down, deliver anyway."""
    try:
        cache = caches[get_settings().cache]
        key = f"django_cio:deliveries:{task_id}"
        cache.add(key, 0, _DELIVERIES_TTL)
        return cache.incr(key) >= MAX_DELIVERIES
    except Exception:  # a cache outage must not stop delivery
        return False
