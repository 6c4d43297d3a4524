"""Whether a workspace's Track API has stopped answering, shared by every worker through the
cache: what keeps one workspace's black hole from holding the workers of the others.

A request to an API that does not answer holds its worker for ``TIMEOUT`` seconds. Workers
that serve several workspaces' queues would all end up waiting on the dead one, and the healthy
workspaces' ops would wait behind them. So a request that times out marks its workspace as
not answering (per Track URL and site id); from then on its deliveries hand their ops back to
the broker at once (no retry counted, as with our own rate limit), and one delivery at a time
probes the API, one every ``probe_every`` seconds: at most one worker per dead workspace waits
on it. The first answer clears the mark. Fast failures (a 503, a refused connection, a 429)
hold no worker and leave the mark alone: retries with backoff deal with them.
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.core.cache import caches

from .conf import CIOSettings

logger = logging.getLogger("django_cio")

# How long a mark lasts without a timeout renewing it, in probe intervals.
_MARK_PROBES = 3


def probe_every(config: CIOSettings) -> float:
    """Seconds between probes: at least the request timeout, so probes never overlap."""
    return max(5.0, float(config.timeout))


def not_answering(config: CIOSettings) -> bool:
    """Whether the workspace's API timed out lately and has not answered since."""
    try:
        return caches[config.cache].get(_key(config)) is not None
    except Exception:  # a cache outage must not stop delivery
        return False


def may_probe(config: CIOSettings) -> bool:
    """Whether this delivery may be the one that tries the API now."""
    try:
        return bool(caches[config.cache].add(_key(config) + ":probe", 1, probe_every(config)))
    except Exception:
        return True


def timed_out(config: CIOSettings) -> None:
    """A request timed out: mark the workspace (or renew its mark)."""
    was_marked = not_answering(config)
    try:
        cache = caches[config.cache]
        cache.set(_key(config), int(time.time()), probe_every(config) * _MARK_PROBES)
        cache.add(_key(config) + ":probe", 1, probe_every(config))  # this was the try
    except Exception as exc:
        logger.warning("customerio: cache unavailable (%s)", type(exc).__name__)
        return
    if not was_marked:
        logger.error("customerio: workspace %r: the Track API does not answer; its ops wait "
                     "on the broker, and one delivery tries it every %.0f s",
                     config.workspace, probe_every(config))


def answered(config: CIOSettings) -> None:
    """The API answered: clear the mark."""
    try:
        caches[config.cache].delete_many([_key(config), _key(config) + ":probe"])
    except Exception as exc:
        logger.warning("customerio: cache unavailable (%s)", type(exc).__name__)
        return
    logger.warning("customerio: workspace %r: the Track API answers again", config.workspace)


def _key(config: CIOSettings) -> str:
    endpoint = f"{config.base_url}\x00{config.site_id}".encode()
    return f"django_cio:not-answering:{hashlib.sha256(endpoint).hexdigest()[:32]}"
