"""The shared limiter with real processes, real Redis and the fake server's request log."""

import multiprocessing
import os
import time

import pytest
from django.test import override_settings

from bench.common import busiest_second
from django_cio.client import TrackClient
from django_cio.fakeserver import FakeTrackAPI
from django_cio.ratelimit import Throttled, get_limiter

pytestmark = pytest.mark.integration


def _send_under_limit(url, site_id, api_key, cio, seconds, start_at):
    """A worker process: acquire, then send one small request, until ``seconds`` pass."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    with override_settings(CUSTOMERIO=cio):
        limiter = get_limiter()
        client = TrackClient(site_id, api_key, url=url, timeout=5)
        time.sleep(max(0.0, start_at - time.time()))
        deadline = start_at + seconds
        number = 0
        while True:
            try:  # a process that cannot reach the limiter's Redis waits, but not forever
                limiter.acquire(max_wait=max(0.0, deadline - time.time()))
            except Throttled:
                return
            if time.time() >= deadline:
                return
            client.identify(f"{os.getpid()}-{number}")
            number += 1


def run_processes(fake, count, seconds, cio, *, each=None):
    """``count`` processes with ``cio``, or one per settings in ``each``."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 2  # all processes set up before the clock starts
    processes = [context.Process(target=_send_under_limit,
                                 args=(fake.url, cio["SITE_ID"], fake.api_key, own, seconds,
                                       start_at))
                 for own in (each or [cio] * count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=seconds + 60)
        assert process.exitcode == 0
    return sorted(request["at"] for request in fake.store.requests)



def new_workspace(settings):
    """A fake Track API for a workspace of this test alone (its own limiter key)."""
    return FakeTrackAPI(site_id=f"limit-test-{os.getpid()}-{time.time_ns()}")


def settings_for(settings, fake, rate):
    return {**settings.CUSTOMERIO, "SITE_ID": fake.site_id, "API_KEY": fake.api_key,
            "TRACK_URL": fake.url, "RATE_LIMIT": rate}


def test_four_processes_never_exceed_the_limit_and_use_most_of_it(settings):
    limit, seconds = 40, 5
    with new_workspace(settings) as fake:
        times = run_processes(fake, 4, seconds, settings_for(settings, fake, f"{limit}/s"))
    assert busiest_second(times) <= limit
    # share of the limit used while sending (process start-up is not the limiter's doing)
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.9 * limit


def test_a_process_cut_off_from_redis_adds_nothing_to_the_limit(settings, private_redis):
    """One process cannot reach the limiter's Redis while another can: both share the same
    workspace, so together they must stay within its limit."""
    limit, seconds = 20, 3
    private_redis.kill()
    with new_workspace(settings) as fake:
        reaching = settings_for(settings, fake, f"{limit}/s")
        cut_off = {**reaching, "REDIS_URL": private_redis.url}
        times = run_processes(fake, 2, seconds, reaching, each=[reaching, cut_off])
    assert busiest_second(times) <= limit


def test_the_app_api_has_a_limit_of_its_own_per_workspace(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RATE_LIMIT": "80/s", "APP_RATE_LIMIT": "10/s"}
    track, app = get_limiter(), get_limiter(api="app")
    assert app.key == track.key + ":app"
    assert app.interval > track.interval  # 10/s: a slot every 0.1 s (with headroom)
