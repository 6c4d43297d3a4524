"""One request rate per Customer.io workspace, shared by every worker process on every host.

Celery's ``rate_limit`` is per worker process: ten workers at "80/s" send 800/s. Here each
request first reserves a slot in Redis with a GCRA script run atomically on the Redis server,
with the server's clock (``TIME``), so hosts with skewed clocks still agree. The script
answers how long to wait for the reserved slot; the caller sleeps exactly that (no polling).
A wait longer than the caller will hold a worker for is not reserved: ``Throttled`` tells the
task to come back later instead.

Why not a library: limits, pyrate-limiter and throttled-py answer "allowed now or not" (and
when to ask again); none reserves a future slot atomically and returns the wait, which is what
lets N processes sleep exactly to their turn instead of retrying in a loop. The script is ten
lines.

If the limiter's Redis cannot be reached, each process falls back to a local limiter at
``RATE_LIMIT / RATE_LIMIT_WORKERS`` and logs it, and tries Redis again after a few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from .conf import CIOSettings, get_settings

logger = logging.getLogger("django_cio")

# Reserve the next slot: one request every ``interval`` seconds, no burst, so no 1-second
# window ever holds more than the limit. Returns the wait as a string (Lua numbers would be
# truncated to integers), negative and unreserved when it exceeds ``max_wait``.
_GCRA = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local interval, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then return tostring(-wait) end
local ttl = math.ceil((wait + interval) * 1000) + 1000
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', ttl)
return tostring(wait)
"""

# Slots are spaced this much wider than the limit: a request leaves a little after its slot
# (sleep overshoot, scheduling), and without slack two of them could then land inside one
# second with the limit already sent between them.
HEADROOM = 0.02

# Seconds to talk to the limiter's Redis before falling back, and to wait before trying again.
_REDIS_TIMEOUT = 0.5
_RETRY_REDIS_AFTER = 5.0


class Throttled(Exception):
    """The next slot is more than ``max_wait`` away; nothing was reserved."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        super().__init__(f"rate limited for {wait:.1f} s")


@dataclass
class LocalLimiter:
    """The same reservation in one process (the fallback, and when there is no Redis)."""

    interval: float
    _tat: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, max_wait: float) -> float:
        with self._lock:
            now = time.monotonic()
            wait = max(self._tat, now) - now
            if wait > max_wait:
                return -wait
            self._tat = max(self._tat, now) + self.interval
            return wait


class RateLimiter:
    """The shared limit of one workspace."""

    def __init__(self, key: str, interval: float, client: redis.Redis | None,
                 fallback_interval: float) -> None:
        self.key, self.interval, self.client = key, interval, client
        self.local = LocalLimiter(fallback_interval)
        self._script = client.register_script(_GCRA) if client is not None else None
        self._redis_down_until = 0.0

    def reserve(self, max_wait: float) -> float:
        """Reserve the next slot and return the seconds until it; ``Throttled`` if too far."""
        wait = self._reserve_shared(max_wait)
        if wait is None:
            wait = self.local.reserve(max_wait)
        if wait < 0:
            raise Throttled(-wait)
        return wait

    def acquire(self, max_wait: float = float("inf")) -> None:
        """Wait for this process's turn to send one request."""
        wait = self.reserve(max_wait)
        if wait > 0:
            time.sleep(wait)

    def state(self) -> dict[str, Any]:
        """For ``cio_status``: whether the limit is shared, and how far ahead it is booked."""
        if self.client is None:
            return {"shared": False}
        try:
            tat, (seconds, micros) = self.client.get(self.key), self.client.time()
        except redis.RedisError as exc:
            return {"shared": False, "error": type(exc).__name__}
        now = seconds + micros / 1_000_000
        return {"shared": True, "booked_seconds": round(max(0.0, float(tat or 0) - now), 3)}

    def _reserve_shared(self, max_wait: float) -> float | None:
        if self._script is None or time.monotonic() < self._redis_down_until:
            return None
        try:
            return float(self._script(keys=[self.key], args=[self.interval, max_wait]))
        except redis.RedisError as exc:
            self._redis_down_until = time.monotonic() + _RETRY_REDIS_AFTER
            logger.warning(
                "customerio: rate limiter's Redis unavailable (%s); limiting this process to "
                "1 request every %.3f s for %.0f s", type(exc).__name__, self.local.interval,
                _RETRY_REDIS_AFTER,
            )
            return None


_lock = threading.Lock()
_cached: tuple[CIOSettings, int, RateLimiter] | None = None


def get_limiter() -> RateLimiter:
    """The limiter of the configured workspace, one per process and settings."""
    global _cached
    cio = get_settings()
    with _lock:
        if _cached is None or _cached[0] is not cio or _cached[1] != os.getpid():
            _cached = (cio, os.getpid(), _make(cio))
        return _cached[2]


def _make(cio: CIOSettings) -> RateLimiter:
    interval = (1 + HEADROOM) / cio.rate.per_second
    url = redis_url(cio)
    client = None
    if url:
        try:
            client = redis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT,
                                          socket_connect_timeout=_REDIS_TIMEOUT)
        except ValueError:  # an odd cache LOCATION: limit per process rather than crash
            logger.warning("customerio: the rate limiter's Redis URL cannot be used; each "
                           "process is limited to RATE_LIMIT / RATE_LIMIT_WORKERS")
    else:
        logger.warning("customerio: no Redis for the shared rate limiter; each process is "
                       "limited to RATE_LIMIT / RATE_LIMIT_WORKERS")
    workspace = hashlib.sha256(str(cio.site_id).encode()).hexdigest()[:16]
    return RateLimiter(f"django_cio:ratelimit:{workspace}", interval, client,
                       interval * cio.rate_limit_workers)


def redis_url(cio: CIOSettings) -> str | None:
    """Where the limiter lives: ``REDIS_URL``, else the cache's Redis, else a Redis broker."""
    if cio.redis_url:
        return cio.redis_url
    cache = settings.CACHES.get(cio.cache, {})
    location = cache.get("LOCATION")
    if isinstance(location, (list, tuple)):
        location = location[0] if location else None
    if isinstance(location, str) and location.startswith(("redis://", "rediss://", "unix://")):
        return location
    from celery import current_app

    broker: Any = current_app.conf.broker_url
    if isinstance(broker, str) and broker.startswith(("redis://", "rediss://")):
        return broker
    return None
