"""Prometheus metrics, when ``prometheus-client`` is installed (the ``[metrics]`` extra);
without it every function here does nothing.

- ``customerio_ops_total{kind, result}``: ops by kind and what became of them (sent, failed,
  skipped, retrying).
- ``customerio_requests_total{status}``: Track API requests by HTTP status (or ``error``).
- ``customerio_request_seconds``: Track API request latency.
- ``customerio_retries_total``: ops handed to a later attempt (backoff, Retry-After, limiter).
- ``customerio_dead_letters_total{kind}``: ops dead-lettered.
- ``customerio_dedup_hits_total``: identifies not sent because Customer.io already has them.
- ``customerio_delivery_lag_seconds``: from an event's ``track`` call (its event id's time) to
  Customer.io's 2xx: what queueing, retries and the rate limit add up to.

Labels are bounded (op kinds, HTTP statuses): never a person, an event name or a reason text.
Worker processes expose them with ``serve(port)`` (see docs/deploy.md).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .operations import event_id_time

if TYPE_CHECKING:
    from .signals import OpResult

try:
    import prometheus_client as prometheus
except ImportError:  # the [metrics] extra is optional
    prometheus = None  # type: ignore[assignment]

logger = logging.getLogger("django_cio")

if prometheus is not None:
    OPS = prometheus.Counter("customerio_ops", "Ops by kind and result.", ["kind", "result"])
    REQUESTS = prometheus.Counter("customerio_requests", "Track API requests by HTTP status.",
                                  ["status"])
    REQUEST_SECONDS = prometheus.Histogram("customerio_request_seconds",
                                           "Track API request latency.")
    RETRIES = prometheus.Counter("customerio_retries", "Ops handed to a later attempt.")
    DEAD_LETTERS = prometheus.Counter("customerio_dead_letters", "Ops dead-lettered.", ["kind"])
    DEDUP_HITS = prometheus.Counter("customerio_dedup_hits",
                                    "Identifies skipped: Customer.io already has them.")
    DELIVERY_LAG = prometheus.Histogram(
        "customerio_delivery_lag_seconds", "From an event's track call to Customer.io's 2xx.",
        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
    )


def _never_raises(count: Callable[..., None]) -> Callable[..., None]:
    """Counting must never fail a delivery (a crash there would retry delivered ops)."""

    @functools.wraps(count)
    def counted(*args: Any, **kwargs: Any) -> None:
        if prometheus is None:
            return
        try:
            count(*args, **kwargs)
        except Exception as exc:
            logger.warning("customerio: metrics failed (%s)", type(exc).__name__)

    return counted


@_never_raises
def request(status: int | str, seconds: float) -> None:
    REQUESTS.labels(str(status)).inc()
    REQUEST_SECONDS.observe(seconds)


@_never_raises
def results(outcomes: Iterable[OpResult]) -> None:
    """Count what became of each op; time the events that were sent."""
    now = time.time()
    for outcome in outcomes:
        op = outcome.op
        OPS.labels(op.kind, outcome.status).inc()
        if outcome.status == "retrying":
            RETRIES.inc()
        elif outcome.status == "skipped":
            DEDUP_HITS.inc()
        elif outcome.status == "sent":
            made = event_id_time(getattr(op, "id", None))
            if made is not None:
                DELIVERY_LAG.observe(max(0.0, now - made))


@_never_raises
def dead_letters(kinds: Iterable[Any]) -> None:
    for kind in kinds:
        DEAD_LETTERS.labels(str(kind)[:32]).inc()


def serve(port: int, addr: str = "") -> None:
    """Expose the metrics over HTTP (``prometheus_client.start_http_server``); with
    ``PROMETHEUS_MULTIPROC_DIR`` set, those of every process of a prefork worker."""
    if prometheus is None:
        raise ImportError("install django-cio[metrics] (prometheus-client) to serve metrics")
    registry = prometheus.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    prometheus.start_http_server(port, addr, registry=registry)

