"""Failure isolation between workspaces, on real worker processes and two fake Track APIs:
while one workspace's API is down, black-holed or in a 429 storm, the other's ops keep
arriving as soon as before.

The assertion is structural, not a benchmark: a design where the broken workspace held up the
healthy one would show lags of its failures' own scale (a black-holed request waits TIMEOUT,
10 s; a 429 asks for Retry-After; a down API's retries back off), far above the bound asserted
here. The figure itself (p95 lag during the outage ÷ before it) is measured by
``bench/workspaces.py``.
"""

import json
import statistics
import time

import pytest

import django_cio
from django_cio.conf import get_settings
from django_cio.fakeserver import FakeTrackAPI
from django_cio.models import DeadLetter
from tests.conftest import purge_queue

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RATE = 10  # ops a second to each workspace
HEALTHY_LAG_BOUND = 3.0  # seconds: under every failure's own time scale


@pytest.fixture
def eu_fake(settings, cio_fake):
    with FakeTrackAPI(site_id="eu-site", api_key="eu-key") as fake:
        settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": {"eu": workspace_of(fake)}}
        yield fake
        purge_queue()  # both workspaces' queues


def workspace_of(fake):
    return {"SITE_ID": fake.site_id, "API_KEY": fake.api_key, "TRACK_URL": fake.url}


def traffic(seconds: float, start: int) -> range:
    """``RATE`` events a second to each workspace; returns their numbers."""
    count = int(seconds * RATE)
    began = time.monotonic()
    for n in range(start, start + count):
        for name in ("default", "eu"):
            django_cio.workspace(name).track(f"{name}-{n % 5}", "tick", n=n, sent=time.time())
        time.sleep(max(0.0, began + (n - start + 1) / RATE - time.monotonic()))
    return range(start, start + count)


def p95_lag(fake, numbers: range) -> float:
    lags = [event["received_at"] - event["data"]["sent"] for event in fake.store.events
            if event["data"]["n"] in numbers]
    assert len(lags) == len(numbers)  # every one of them arrived, once
    return statistics.quantiles(lags, n=20)[-1]


# Two workers serving both workspaces' queues: the layout that can fail. (A worker per
# workspace is isolated by construction: no process serves both queues.)
@pytest.mark.parametrize(("outage", "settling"), [
    ("down", 0),  # every request answered 503
    ("429 storm", 0),
    # Each worker may be caught by the black hole once, for TIMEOUT (10 s), before the first
    # timeout marks the workspace as not answering: measured after that.
    ("black hole", 12),
])
def test_one_workspace_down_does_not_slow_the_other(outage, settling, cio_fake, eu_fake,
                                                    worker_process, wait_for):
    default_queue, eu_queue = get_settings().queue, get_settings("eu").queue
    env = {"CIO_TEST_QUEUE": default_queue,
           "CIO_TEST_CUSTOMERIO": json.dumps({"WORKSPACES": {"eu": workspace_of(eu_fake)}})}
    for _ in range(2):
        worker_process(f"{default_queue},{eu_queue}", env=env)
    django_cio.track("warm-up", "tick", n=-1, sent=time.time())
    wait_for(lambda: cio_fake.store.events, timeout=60)

    before = traffic(3, 0)
    wait_for(lambda: len(eu_fake.store.events) == len(before), timeout=60)
    if outage == "down":
        eu_fake.configure(error_rate=1.0)
    elif outage == "429 storm":
        eu_fake.configure(rate_limit=0.2, retry_after=5)
    else:
        eu_fake.configure(latency_ms=60_000)
    first = traffic(settling, before.stop)
    during = traffic(5, first.stop)
    sent = len(before) + len(first) + len(during)
    wait_for(lambda: len(cio_fake.store.events) == 1 + sent, timeout=60)

    healthy_before, healthy_during = p95_lag(cio_fake, before), p95_lag(cio_fake, during)
    print(f"{outage}: healthy p95 lag {healthy_before:.3f} s before, "
          f"{healthy_during:.3f} s during")
    assert healthy_during < HEALTHY_LAG_BOUND
    eu_fake.configure(error_rate=0.0, rate_limit=None, latency_ms=0)  # back
    # Nothing of the broken workspace was lost, nor sent to the other one.
    wait_for(lambda: len(eu_fake.store.events) == sent, timeout=180)
    p95_lag(eu_fake, during)
    assert {event["person"].split("-")[0] for event in cio_fake.store.events} == {"default",
                                                                                   "warm"}
    assert not DeadLetter.objects.exists()
