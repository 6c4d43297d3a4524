"""Fault injection on real parts: each test starts its own worker processes (and, where a
server must die, a private ``redis-server``) and stops only those.

Redis brokers here are private servers, so that a worker restoring unacknowledged messages
never touches another test run's. Where the docs' five-minute visibility timeout would make a
test wait that long, the test scales it down (``CIO_TEST_VISIBILITY_TIMEOUT``) and says so.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest

import django_cio
from django_cio.models import DeadLetter, Outbox
from tests.celery_app import BROKERS
from tests.conftest import purge_queue, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCALED_VISIBILITY = "15"  # seconds, for the docs' 300: the same path, twenty times sooner


@pytest.fixture
def on_broker(private_redis):
    """``on_broker(name)``: this process publishes to that broker (a private Redis, or this
    run's RabbitMQ queue), and returns the environment a worker process needs for it."""

    def choose(name: str) -> dict[str, str]:
        if name == "rabbitmq":
            use_broker(BROKERS["rabbitmq"])
            purge_queue()
            return {"CIO_TEST_BROKER": "rabbitmq"}
        use_broker(private_redis.url)
        return {"CIO_TEST_BROKER": "redis", "CIO_TEST_REDIS_BROKER": private_redis.url,
                "CIO_TEST_VISIBILITY_TIMEOUT": SCALED_VISIBILITY}

    yield choose
    purge_queue()
    use_broker(BROKERS["redis"])


def send_events(count: int) -> None:
    """``count`` messages of one event each; event ``n`` carries ``n``."""
    for n in range(count):
        django_cio.track(f"p{n % 7}", "clicked", n=n)


def assert_each_event_once(fake, count: int) -> None:
    """Every event arrived, and any repeat came with the same event id (so Customer.io, like
    the fake, kept one copy): no event is there twice."""
    assert sorted(event["data"]["n"] for event in fake.store.events) == list(range(count))


def pool_processes(worker) -> list[int]:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def stop(worker, sig: int = signal.SIGKILL) -> None:
    os.killpg(worker.pid, sig)
    worker.wait(timeout=60)


@pytest.mark.parametrize("broker_name", ["redis", "rabbitmq"])
@pytest.mark.parametrize("victim", ["pool process", "whole worker"])
def test_a_worker_killed_mid_delivery_loses_nothing(broker_name, victim, on_broker, cio_fake,
                                                    worker_process, wait_for):
    env = on_broker(broker_name)
    # The request in flight when the worker dies is answered 503 (to no one): only the
    # broker's redelivery can bring its ops to Customer.io.
    cio_fake.configure(latency_ms=200)
    cio_fake.fail_next(503)
    send_events(60)
    worker = worker_process(broker=broker_name, env=env)
    wait_for(lambda: cio_fake.received >= 1, timeout=60)
    if victim == "pool process":  # the main process sees it lost and requeues its message
        os.kill(pool_processes(worker)[0], signal.SIGKILL)
    else:  # nothing left to requeue: the broker gives the messages back
        stop(worker)
        worker_process(broker=broker_name, env=env)
    wait_for(lambda: len(cio_fake.store.events) == 60, timeout=120)
    assert_each_event_once(cio_fake, 60)
    assert cio_fake.store.stats()["statuses"]["503"] == 1
    assert not DeadLetter.objects.exists()


def test_graceful_shutdown_mid_batch_finishes_it_and_the_rest_waits(cio_fake, on_broker,
                                                                     worker_process, wait_for):
    env = on_broker("redis")
    cio_fake.configure(latency_ms=1500)
    send_events(40)
    worker = worker_process(env=env)
    wait_for(lambda: cio_fake.received >= 1, timeout=60)
    os.kill(worker.pid, signal.SIGTERM)  # as Kubernetes stops a pod: warm shutdown
    assert worker.wait(timeout=60) == 0
    finished = len(cio_fake.store.events)
    assert finished > 0  # the batch in flight was not abandoned
    cio_fake.configure(latency_ms=0)
    worker_process(env=env)
    wait_for(lambda: len(cio_fake.store.events) == 40, timeout=60)
    assert_each_event_once(cio_fake, 40)


def test_broker_down_requests_succeed_and_the_outbox_relays_every_op(
        private_redis, on_broker, cio_fake, worker_process, client, wait_for):
    env = on_broker("redis")
    worker_process(env=env)
    slowest = 0.0
    for n in range(30):
        if n == 10:
            private_redis.kill()
        if n == 20:
            private_redis.start()  # the same port and data: the broker is back
        started = time.monotonic()
        assert client.get("/signup/", {"username": f"s{n}"}).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
    # A liveness bound, not a benchmark: a publish gives up after 1 s; a hang would be minutes.
    assert slowest < 10
    assert Outbox.objects.exists()
    # No beat and no cio_relay: the running worker relays the Outbox by itself.
    wait_for(lambda: len(cio_fake.store.events) == 30, timeout=90)
    assert len(cio_fake.store.people) == 30
    assert cio_fake.store.stats()["duplicate_event_ids"] == 0
    assert not Outbox.objects.exists()


def test_customerio_down_for_a_while_loses_nothing_and_dead_letters_nothing(
        on_broker, cio_fake, worker_process, wait_for):
    env = on_broker("redis")
    # Backoff capped at 4 s (the default is 600) so the retry window outlasts a 5 s outage
    # in seconds, not hours: MAX_RETRIES is 8.
    env["CIO_TEST_CUSTOMERIO"] = '{"RETRY_BACKOFF_MAX": 4}'
    cio_fake.configure(error_rate=1.0)
    send_events(30)
    worker_process(env=env)
    wait_for(lambda: cio_fake.store.stats()["statuses"].get("503", 0) >= 2, timeout=60)
    time.sleep(5)
    cio_fake.configure(error_rate=0.0)
    wait_for(lambda: len(cio_fake.store.events) == 30, timeout=120)
    assert_each_event_once(cio_fake, 30)
    assert not DeadLetter.objects.exists()


def test_a_429_storm_is_waited_out_without_a_retry_storm(on_broker, cio_fake, worker_process,
                                                          wait_for):
    env = on_broker("redis")
    cio_fake.configure(retry_after=1)
    cio_fake.fail_next(*[429] * 8)
    send_events(200)
    for _ in range(2):
        worker_process(env=env)
    wait_for(lambda: len(cio_fake.store.events) == 200, timeout=120)
    assert_each_event_once(cio_fake, 200)
    stats = cio_fake.store.stats()
    # Each worker process waits Retry-After (1 s) after a 429: at most one request per
    # process per second while the storm lasts, whatever the backlog.
    assert stats["rate_limited"] == 8
    assert stats["max_requests_per_second"] <= 2 * 2
    assert stats["requests"] <= 8 + 10
    assert not DeadLetter.objects.exists()


def test_cache_down_identifies_are_still_sent_and_nothing_is_lost(
        private_redis, on_broker, cio_fake, worker_process, wait_for, settings):
    env = on_broker("rabbitmq")
    dead_cache = private_redis.url.replace("/0", "/1")
    private_redis.kill()  # the dedup cache and the redelivery counter: gone
    limiter = json.dumps({"REDIS_URL": settings.REDIS_URL})  # the limiter's Redis is up
    worker_process(broker="rabbitmq", env={**env, "REDIS_URL": dead_cache,
                                           "CIO_TEST_CUSTOMERIO": limiter})
    for round_ in range(2):  # the second round would be dropped as seen, with a cache
        for n in range(10):
            django_cio.identify(f"c{n}", email=f"c{n}@example.com", plan="pro")
        wait_for(lambda r=round_: cio_fake.store.stats()["ops"].get("identify", 0)
                 == 10 * (r + 1), timeout=60)
    send_events(20)
    wait_for(lambda: len(cio_fake.store.events) == 20, timeout=60)
    assert len(cio_fake.store.people) == 10
    assert not DeadLetter.objects.exists()


def test_a_celery_time_limit_never_acknowledges_undelivered_ops(on_broker, cio_fake,
                                                                 worker_process, wait_for):
    env = on_broker("redis")
    # A project-wide hard limit of 3 s, and one message whose delivery takes about 6 s (15
    # anonymous events, one v1 request each, 400 ms apiece). The task must hand the rest on
    # before the limit kills it: a killed task's message would be acknowledged and lost.
    # (TIMEOUT 1 s instead of 10, so that requests fit in the 3 s: the same path, scaled.)
    env.update(CIO_TEST_TIME_LIMIT="3", CIO_TEST_CUSTOMERIO='{"TIMEOUT": 1}')
    cio_fake.configure(latency_ms=400)
    with django_cio.batch():
        for n in range(15):
            django_cio.track_anonymous("visitor", "clicked", n=n)
    worker_process(env=env)
    wait_for(lambda: len(cio_fake.store.events) == 15, timeout=90)
    assert_each_event_once(cio_fake, 15)
    assert not DeadLetter.objects.exists()


def test_the_limiters_redis_down_pauses_delivery_and_loses_nothing(
        private_redis, on_broker, cio_fake, worker_process, wait_for):
    # Sending without the shared limit could exceed it (other processes may still reach
    # Redis): a worker that cannot reach the limiter's Redis sends nothing, hands its ops back
    # to the broker, and delivers them once Redis is back.
    env = on_broker("rabbitmq")
    limiter = json.dumps({"REDIS_URL": private_redis.url})
    private_redis.kill()
    send_events(20)
    worker_process(broker="rabbitmq", env={**env, "CIO_TEST_CUSTOMERIO": limiter})
    time.sleep(5)
    assert cio_fake.received == 0
    private_redis.start()
    wait_for(lambda: len(cio_fake.store.events) == 20, timeout=90)
    assert_each_event_once(cio_fake, 20)
    assert not DeadLetter.objects.exists()
