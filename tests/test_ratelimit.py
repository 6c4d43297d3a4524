"""The limiter's reservations against the real Redis (processes: tests/integration)."""

import itertools
import time
import uuid

import pytest
import redis
from django.conf import settings as django_settings

from django_cio import ratelimit
from django_cio.conf import get_settings
from django_cio.ratelimit import RateLimiter, Throttled, get_limiter
from tests.celery_app import BROKERS


def limiter(interval=0.1, url=None, fallback=1.0):
    client = redis.Redis.from_url(url or django_settings.REDIS_URL, socket_timeout=0.5,
                                  socket_connect_timeout=0.5)
    return RateLimiter(f"django_cio:ratelimit:test-{uuid.uuid4()}", interval, client, fallback)


def test_reservations_are_spaced_one_interval_apart():
    shared = limiter(interval=0.1)
    waits = [shared.reserve(max_wait=10) for _ in range(5)]
    assert waits[0] == pytest.approx(0, abs=0.01)
    assert all(later > earlier for earlier, later in itertools.pairwise(waits))
    assert 0.3 < waits[4] <= 0.4 + 1e-6  # four slots ahead, less the time the calls took


def test_a_wait_beyond_max_wait_is_refused_and_not_reserved():
    shared = limiter(interval=1.0)
    shared.reserve(max_wait=10)
    with pytest.raises(Throttled) as caught:
        shared.reserve(max_wait=0.5)
    assert 0.5 < caught.value.wait <= 1.0
    assert 0.5 < shared.reserve(max_wait=10) <= 1.0  # the refused slot was not taken


def test_workspaces_do_not_share_a_limit(settings):
    site = f"site-{uuid.uuid4()}"
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": site, "RATE_LIMIT": "1/s"}
    first = get_limiter()
    first.reserve(max_wait=10)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": f"{site}-other"}
    other = get_limiter()
    assert other.key != first.key
    assert other.reserve(max_wait=10) == pytest.approx(0, abs=0.01)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": site}
    assert get_limiter().reserve(max_wait=10) > 0.9  # same workspace, same limit


def test_processes_share_the_limit_through_redis():
    one = limiter(interval=1.0)
    other = RateLimiter(one.key, 1.0, one.client, 1.0)  # another process, same workspace
    one.reserve(max_wait=10)
    assert other.reserve(max_wait=10) > 0.9


def test_acquire_sleeps_until_the_slot():
    shared = limiter(interval=0.2)
    shared.acquire()
    started = time.monotonic()
    shared.acquire()
    assert time.monotonic() - started >= 0.15


def test_without_redis_each_process_falls_back_to_its_share(private_redis, caplog):
    local = limiter(interval=0.01, url=private_redis.url, fallback=0.5)
    private_redis.kill()
    waits = [local.reserve(max_wait=10) for _ in range(3)]
    assert waits[0] == pytest.approx(0, abs=0.01) and waits[2] > 0.9  # 2 slots of 0.5 s
    assert "rate limiter's Redis unavailable (ConnectionError)" in caplog.text
    assert caplog.text.count("unavailable") == 1  # logged once, not per request


def test_the_limiter_follows_settings(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RATE_LIMIT": "4800/m",
                           "RATE_LIMIT_WORKERS": 8}
    shared = get_limiter()
    assert shared.interval == pytest.approx((1 + ratelimit.HEADROOM) / 80)
    assert shared.local.interval == pytest.approx(shared.interval * 8)
    assert get_limiter() is shared


def test_the_limiters_redis_is_redis_url_then_the_cache_then_the_broker(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "REDIS_URL": "redis://127.0.0.1:6379/3"}
    assert ratelimit.redis_url(get_settings()) == "redis://127.0.0.1:6379/3"
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "REDIS_URL": None}
    assert ratelimit.redis_url(get_settings()) == settings.CACHES["default"]["LOCATION"]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert ratelimit.redis_url(get_settings()) == BROKERS["redis"]
