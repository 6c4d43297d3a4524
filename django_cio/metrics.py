"""Prometheus metrics, when ``prometheus-client`` is installed (the ``[metrics]`` extra);
without it every function here does nothing.

- ``customerio_ops_total{workspace, kind, result}``: ops by kind and what became of them
  (sent, failed, skipped, retrying).
- ``customerio_requests_total{workspace, status}``: Track API requests by HTTP status (or
  ``error``).
- ``customerio_request_seconds{workspace}``: Track API request latency.
- ``customerio_retries_total{workspace}``: ops handed to a later attempt (backoff,
  Retry-After, limiter).
- ``customerio_dead_letters_total{workspace, kind}``: ops dead-lettered.
- ``customerio_dedup_hits_total{workspace}``: identifies not sent because Customer.io already
  has them.
- ``customerio_delivery_lag_seconds{workspace}``: from an event's ``track`` call (its event
  id's time) to Customer.io's 2xx: what queueing, retries and the rate limit add up to.

Labels are bounded (workspace names from the settings, op kinds, HTTP statuses): never a
person, an event name or a reason text.
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
    OPS = prometheus.Counter("customerio_ops", "Ops by kind and result.",
                             ["workspace", "kind", "result"])
    REQUESTS = prometheus.Counter("customerio_requests", "Track API requests by HTTP status.",
                                  ["workspace", "status"])
    REQUEST_SECONDS = prometheus.Histogram("customerio_request_seconds",
                                           "Track API request latency.", ["workspace"])
    RETRIES = prometheus.Counter("customerio_retries", "Ops handed to a later attempt.",
                                 ["workspace"])
    DEAD_LETTERS = prometheus.Counter("customerio_dead_letters", "Ops dead-lettered.",
                                      ["workspace", "kind"])
    DEDUP_HITS = prometheus.Counter("customerio_dedup_hits",
                                    "Identifies skipped: Customer.io already has them.",
                                    ["workspace"])
    DELIVERY_LAG = prometheus.Histogram(
        "customerio_delivery_lag_seconds", "From an event's track call to Customer.io's 2xx.",
        ["workspace"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
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
def request(workspace: str, status: int | str, seconds: float) -> None:
    REQUESTS.labels(workspace, str(status)).inc()
    REQUEST_SECONDS.labels(workspace).observe(seconds)


@_never_raises
def results(outcomes: Iterable[OpResult]) -> None:
    """Count what became of each op; time the events that were sent."""
    now = time.time()
    for outcome in outcomes:
        op = outcome.op
        workspace = op.workspace or "default"
        OPS.labels(workspace, op.kind, outcome.status).inc()
        if outcome.status == "retrying":
            RETRIES.labels(workspace).inc()
        elif outcome.status == "skipped" and op.api == "track":  # not a message sent before
            DEDUP_HITS.labels(workspace).inc()
        elif outcome.status == "sent":
            made = event_id_time(getattr(op, "id", None))
            if made is not None:
                DELIVERY_LAG.labels(workspace).observe(max(0.0, now - made))


@_never_raises
def dead_letters(ops: Iterable[Any]) -> None:
    """Count dead-lettered ops (queued form) by workspace and kind."""
    for op in ops:
        workspace = op.get("workspace") or "default"
        DEAD_LETTERS.labels(str(workspace)[:40], str(op.get("kind"))[:32]).inc()


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

