"""The limiter's reservations against the real Redis (processes: tests/integration)."""

import itertools
import math
import socket
import subprocess
import threading
import time
import uuid

import pytest
import redis
from django.conf import settings as django_settings

from django_cio import ratelimit
from django_cio.conf import get_settings
from django_cio.ratelimit import RateLimiter, Throttled, get_limiter
from tests.celery_app import BROKERS
from tests.conftest import free_port


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


def test_a_process_that_loses_redis_sends_nothing_while_the_others_share_the_limit(
        private_redis, caplog):
    """One process's Redis fails (a blip, a partition) while the others still book the full
    limit in Redis: whatever that process sends on its own comes on top of the limit."""
    limit = 20
    shared = limiter(interval=(1 + ratelimit.HEADROOM) / limit)
    cut_off = limiter(interval=shared.interval, url=private_redis.url,
                      fallback=shared.interval * 4)
    cut_off.key = shared.key  # same workspace
    private_redis.kill()
    within_a_second = booked_within(shared, 1.0) + booked_within(cut_off, 1.0)
    assert within_a_second <= limit
    assert "rate limiter's Redis unavailable (ConnectionError)" in caplog.text
    assert caplog.text.count("unavailable") == 1  # logged once, not per request


def booked_within(shared, seconds):
    """How many slots ``shared`` gets in the next ``seconds``."""
    booked = 0
    try:
        while True:
            shared.reserve(max_wait=seconds)
            booked += 1
    except Throttled:
        return booked


def test_acquire_waits_for_the_limiters_redis_as_long_as_max_wait(private_redis):
    shared = limiter(interval=0.01, url=private_redis.url)
    private_redis.kill()
    with pytest.raises(ratelimit.LimiterUnavailable):
        shared.acquire(max_wait=0.1)
    assert isinstance(ratelimit.LimiterUnavailable(1.0), Throttled)  # tasks hand the ops back


@pytest.fixture
def redis_with_password(tmp_path):
    """A private ``redis-server`` that needs a password, as a managed Redis does."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--requirepass", "s3cret", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        server.kill()
        server.wait()


def wait_for_port(port):
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"redis-server on {port} did not start")


@pytest.mark.parametrize(("backend", "options"), [
    ("django_redis.cache.RedisCache", {"PASSWORD": "s3cret"}),
    ("django.core.cache.backends.redis.RedisCache", {"password": "s3cret"}),
], ids=["django-redis", "django"])
def test_the_limiter_uses_the_caches_own_client_with_its_options(settings, redis_with_password,
                                                                 backend, options):
    """Credentials in the cache's OPTIONS, not in its URL, must reach the limiter too, with
    django-redis and with Django's own Redis cache."""
    settings.CACHES = {"default": {
        "BACKEND": backend, "LOCATION": f"redis://127.0.0.1:{redis_with_password}/0",
        "OPTIONS": options,
    }}
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "REDIS_URL": None,
                           "SITE_ID": f"site-{uuid.uuid4()}", "RATE_LIMIT": "1/s"}
    shared = get_limiter()
    assert shared.reserve(max_wait=10) == pytest.approx(0, abs=0.01)
    assert shared.state()["shared"] is True
    assert shared.reserve(max_wait=10) > 0.9  # booked in that Redis, not per process


def booked_until(shared):
    """The limiter's next free slot in Redis, in integer microseconds of the server clock."""
    stored = float(shared.client.get(shared.key))
    return round(stored if stored > 1e12 else stored * 1_000_000)  # seconds before the fix


def busiest_window_us(times):
    """The most of ``times`` (sorted integer microseconds) in any window [t, t + 1 s)."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= 1_000_000:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize("rate", [1, 80, 400, 990, 1000])
def test_slot_times_are_exact_to_the_microsecond_at_any_rate(rate):
    interval = (1 + ratelimit.HEADROOM) / rate
    shared = limiter(interval=interval)
    slots, waits = [], []
    for _ in range(2 * rate + 2):  # more than two seconds' worth
        waits.append(shared.reserve(max_wait=float("inf")))
        slots.append(booked_until(shared))
    # Spacing under backlog (the slot was still ahead of the server's clock when booked).
    spacing = [later - earlier for (earlier, later), wait
               in zip(itertools.pairwise(slots), waits[1:], strict=True) if wait > 0]
    assert len(spacing) >= len(slots) // 2
    assert set(spacing) == {math.ceil(round(interval * 1_000_000, 3))}
    assert busiest_window_us(slots) <= rate


def test_a_process_late_for_its_slot_gives_it_up_and_takes_the_next(monkeypatch):
    """A process descheduled past its slot must not send then: that late, its request shares
    a second with the L requests booked after it."""
    limit = 10
    interval = (1 + ratelimit.HEADROOM) / limit
    punctual, late = limiter(interval=interval), limiter(interval=interval)
    late.key = punctual.key
    sent = {"punctual": [], "late": []}
    late_thread: list[threading.Thread] = []
    real_sleep = time.sleep

    def descheduled_once(seconds):
        if threading.current_thread() in late_thread:
            late_thread.clear()
            seconds += 0.3  # woken 300 ms after its slot
        real_sleep(seconds)

    def send_for(name, shared, seconds):
        deadline = time.monotonic() + seconds
        while True:
            shared.acquire()
            if time.monotonic() >= deadline:
                return
            sent[name].append(time.monotonic())

    monkeypatch.setattr(ratelimit.time, "sleep", descheduled_once)
    others = threading.Thread(target=send_for, args=("punctual", punctual, 2.5))
    others.start()
    real_sleep(0.5)  # the others are booking slot after slot
    late_thread.append(threading.current_thread())
    late.acquire()
    sent["late"].append(time.monotonic())
    others.join()
    assert len(sent["late"]) == 1
    times = sorted(sent["punctual"] + sent["late"])
    assert busiest_window_us([round(moment * 1_000_000) for moment in times]) <= limit


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
