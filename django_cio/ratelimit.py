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

If the limiter's Redis cannot be reached, the process sends nothing (``LimiterUnavailable``,
a ``Throttled``) and tries Redis again after a moment: any limit of its own would add to what
the processes that still reach Redis send. Only a project with no Redis at all limits each
process on its own, to ``RATE_LIMIT / RATE_LIMIT_WORKERS``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from .caching import redis_client
from .conf import DEFAULT_WORKSPACE, CIOSettings, get_settings
from .exceptions import LimiterUnavailable, Throttled

logger = logging.getLogger("django_cio")

# Reserve the next slot: one request every ``interval`` microseconds, no burst, so no 1-second
# window ever holds more than the limit. All in integer microseconds: a Unix time in them
# (~1.7e15) is exact in a Lua double, whereas ``tostring`` keeps 14 digits and rounded slot
# times to 0.1 ms. A free slot is booked ``lead`` ahead: the time its reply takes to reach the
# caller, who would otherwise always hear of it too late. Returns the wait, negative and
# unreserved when it exceeds ``max_wait``, and the server's time (for ``ReplyDelay``).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, max_wait, lead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now + lead then tat = now + lead end
local wait = tat - now
if wait > max_wait then return {-wait, now} end
local ttl = math.ceil((wait + interval) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', ttl)
return {wait, now}
"""

# Slots are spaced this much wider than the limit: a request reaches Customer.io a little
# after its slot (sleep overshoot, scheduling, the send itself), and L + 1 requests fit in one
# second only if one of them is later than the slack relative to the others: 80 ms a second,
# of which LATE goes to waking up and the rest to the send. Up to 1 / 1.08 = 92.6% of L stays
# usable; 5% was not enough for big batches on a loaded 2-core host (bench/run.py scale-out).
HEADROOM = 0.08
# A process that wakes later than this after its slot (descheduled, overloaded host) gives the
# slot up and reserves the next free one: sent that late, it could share a second with the L
# slots booked after it. The rest of the slack is for the send on its way out.
LATE = 0.020
# A process learns of its slot one reply later than Redis booked it (see ``ReplyDelay``).
REPLIES_KEPT = 16
REPLIES_NEEDED = 3  # earlier replies before any of a round trip is taken for the network's

# Seconds to talk to the limiter's Redis, and to wait before trying it again after a failure.
_REDIS_TIMEOUT = 0.5
_RETRY_REDIS_AFTER = 1.0
_MICROS = 1_000_000
_FOREVER = 10**9  # seconds: "no limit" for max_wait, still an exact integer of microseconds


@dataclass
class LocalLimiter:
    """The same reservation in one process (when the project has no Redis at all)."""

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


class ReplyDelay:
    """How long after Redis booked a slot its reply reaches this process.

    A limiter 20 ms or more away would otherwise make every slot look late (judged from when
    it was asked for), and a far host's requests all leave a reply later than a near host's.
    The steady part is taken as half the least of the last round trips (a path is about as
    slow both ways); on top of it comes what this reply took beyond the quickest recent one
    (its arrival against Redis's own ``TIME``, so clock offsets cancel out): a lost packet
    retransmitted, a stalled Redis. Until ``REPLIES_NEEDED`` replies are known there is no
    estimate (``None``): the first includes connecting and loading the script.
    """

    def __init__(self) -> None:
        self._replies: deque[tuple[float, float]] = deque(maxlen=REPLIES_KEPT)
        self._lock = threading.Lock()

    def of(self, round_trip: float, arrival_after_redis_time: float) -> float | None:
        """This reply's delay, or ``None`` (not enough known); then it is one more known."""
        with self._lock:
            earlier = list(self._replies)
            self._replies.append((round_trip, arrival_after_redis_time))
        if len(earlier) < REPLIES_NEEDED:
            return None
        steady = min(trip for trip, _ in earlier) / 2
        held_up = arrival_after_redis_time - min(arrival for _, arrival in earlier)
        return min(round_trip, steady + max(0.0, held_up))

    def steady(self) -> float:
        """The usual delay of a reply (0 until enough are known): how far ahead to book."""
        with self._lock:
            if len(self._replies) < REPLIES_NEEDED:
                return 0.0
            return min(trip for trip, _ in self._replies) / 2


class RateLimiter:
    """The shared limit of one workspace."""

    def __init__(self, key: str, interval: float, client: redis.Redis | None,
                 fallback_interval: float) -> None:
        self.key, self.interval, self.client = key, interval, client
        # Rounded up: a slot never comes sooner than the limit allows.
        self.interval_us = math.ceil(round(interval * _MICROS, 3))
        self.local = LocalLimiter(fallback_interval)  # used only when there is no Redis
        self._script = client.register_script(_GCRA) if client is not None else None
        self._redis_down_until = 0.0
        self._reply_delay = ReplyDelay()

    def reserve(self, max_wait: float) -> float:
        """Reserve the next slot and return the seconds until it; ``Throttled`` if too far,
        ``LimiterUnavailable`` if the shared limiter cannot be reached."""
        return self._reserve(max_wait)[0]

    def acquire(self, max_wait: float = float("inf")) -> None:
        """Wait for this process's turn to send one request, at most ``max_wait`` seconds."""
        deadline = time.monotonic() + max_wait
        while True:
            asked = time.monotonic()
            try:
                wait, redis_time = self._reserve(max(0.0, deadline - asked))
            except LimiterUnavailable as unavailable:
                if asked + unavailable.wait > deadline:
                    raise
                time.sleep(unavailable.wait)
                continue
            answered = time.monotonic()
            reply = 0.0 if redis_time is None else self._reply_delay.of(
                answered - asked, time.time() - redis_time)
            if reply is None:  # the slot is between these, on this process's clock
                earliest, latest = asked + wait, answered + wait
            else:
                earliest = latest = answered - reply + wait
            time.sleep(max(0.0, latest - time.monotonic()))  # never before the slot
            now = time.monotonic()
            if now - earliest <= LATE:  # lateness never underrated
                return
            if now >= deadline:  # late every time (an overloaded host): come back later
                raise Throttled(self.interval)

    def state(self) -> dict[str, Any]:
        """For ``cio_status``: whether the limit is shared, and how far ahead it is booked."""
        if self.client is None:
            return {"shared": False}
        try:
            tat, (seconds, micros) = self.client.get(self.key), self.client.time()
        except redis.RedisError as exc:
            return {"shared": False, "error": type(exc).__name__}
        booked = max(0, int(float(tat or 0)) - (seconds * _MICROS + micros))
        return {"shared": True, "booked_seconds": round(booked / _MICROS, 3)}

    def _reserve(self, max_wait: float) -> tuple[float, float | None]:
        """The wait for the next slot, and Redis's time when it was booked (``None``: booked
        in this process)."""
        if self._script is None:
            wait, redis_time = self.local.reserve(max_wait), None
        else:
            wait, redis_time = self._reserve_shared(max_wait)
        if wait < 0:
            raise Throttled(-wait)
        return wait, redis_time

    def _reserve_shared(self, max_wait: float) -> tuple[float, float]:
        assert self._script is not None
        left = self._redis_down_until - time.monotonic()
        if left > 0:
            raise LimiterUnavailable(left)
        max_wait_us = int(min(max_wait, _FOREVER) * _MICROS)
        lead_us = int(self._reply_delay.steady() * _MICROS)
        try:
            wait_us, now_us = self._script(keys=[self.key],
                                           args=[self.interval_us, max_wait_us, lead_us])
        except redis.RedisError as exc:
            self._redis_down(exc)
            raise LimiterUnavailable(_RETRY_REDIS_AFTER) from None
        if self._redis_down_until:
            self._redis_down_until = 0.0
            logger.warning("customerio: rate limiter's Redis reachable again; sending")
        return int(wait_us) / _MICROS, int(now_us) / _MICROS

    def _redis_down(self, exc: redis.RedisError) -> None:
        self._reply_delay = ReplyDelay()  # the Redis that answers next may be another, elsewhere
        if not self._redis_down_until:  # once per outage, not per request
            logger.warning(
                "customerio: rate limiter's Redis unavailable (%s); sending nothing until it "
                "answers, trying again every %.0f s", type(exc).__name__, _RETRY_REDIS_AFTER,
            )
        self._redis_down_until = time.monotonic() + _RETRY_REDIS_AFTER


_lock = threading.Lock()
_cached: dict[tuple[str, str], tuple[CIOSettings, int, RateLimiter]] = {}


def get_limiter(workspace: str = DEFAULT_WORKSPACE, api: str = "track") -> RateLimiter:
    """A workspace's limiter for the Track API (``RATE_LIMIT``) or, for transactional
    messages, the App API (``APP_RATE_LIMIT``): one per process, workspace, API and settings."""
    config = get_settings(workspace)
    with _lock:
        cached = _cached.get((workspace, api))
        if cached is None or cached[0] is not config or cached[1] != os.getpid():
            cached = _cached[workspace, api] = (config, os.getpid(), _make(config, api))
        return cached[2]


def _make(config: CIOSettings, api: str = "track") -> RateLimiter:
    rate = config.app_rate if api == "app" else config.rate
    interval = (1 + HEADROOM) / rate.per_second
    key = f"django_cio:ratelimit:{hashlib.sha256(str(config.site_id).encode()).hexdigest()[:16]}"
    if config.workspace != DEFAULT_WORKSPACE:  # its own, even if it shares the site id
        key += f":{config.workspace}"
    if api == "app":  # the App API counts its sends apart from Track requests
        key += ":app"
    return RateLimiter(key, interval, _client(config),
                       interval * config.rate_limit_workers)


def _client(config: CIOSettings) -> redis.Redis | None:
    """``REDIS_URL``, else the cache's own client (its credentials, Sentinel, pool options),
    else a client for the cache's or the broker's URL."""
    if not config.redis_url:
        client = redis_client(config.cache)
        if client is not None:
            return client
    url = redis_url(config)
    if not url:
        logger.warning("customerio: no Redis for the shared rate limiter; each process is "
                       "limited to RATE_LIMIT / RATE_LIMIT_WORKERS")
        return None
    try:
        return redis.Redis.from_url(url, socket_timeout=_REDIS_TIMEOUT,
                                    socket_connect_timeout=_REDIS_TIMEOUT)
    except ValueError:  # an odd URL: pause (as when Redis is down) rather than crash
        logger.warning("customerio: the rate limiter's Redis URL cannot be used")
        return redis.Redis(unix_socket_path="/dev/null/invalid-redis-url")  # fails at once


def redis_url(config: CIOSettings) -> str | None:
    """Where the limiter lives: ``REDIS_URL``, else the cache's Redis, else a Redis broker."""
    if config.redis_url:
        return config.redis_url
    cache = settings.CACHES.get(config.cache, {})
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
