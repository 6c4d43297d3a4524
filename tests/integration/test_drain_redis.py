"""A drain on a Redis broker takes each message and records it unacknowledged in one step:
a worker killed between two commands loses no message.

Each test runs its own ``redis-server`` (``private_redis``): a worker restoring
unacknowledged messages must never touch another run's.
"""

import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import redis
from redis.connection import AbstractConnection

from django_cio.broker import drain as broker_drain
from django_cio.broker import publish as broker_publish
from django_cio.conf import get_settings
from django_cio.models import DeadLetter
from django_cio.operations import Event
from tests.celery_app import BROKERS
from tests.conftest import use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The docs' 300 s visibility timeout, scaled down as in tests/reliability/test_faults.py.
SCALED_VISIBILITY = "15"


@pytest.fixture
def redis_broker(private_redis):
    """This process publishes to (and drains from) a private Redis; yields a client to it."""
    use_broker(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    yield client
    broker_drain.reconnect()
    client.close()
    use_broker(BROKERS["redis"])


def queue_events(client: redis.Redis, count: int) -> list[str]:
    """``count`` one-op messages; returns their task ids in the order they were sent."""
    for number in range(count):
        broker_publish.publish_ops([Event(f"p{number}", "viewed", {"n": number}).to_dict()])
    return [json.loads(item)["headers"]["id"]
            for item in reversed(client.lrange(get_settings().queue, 0, -1))]


def where_each_message_is(client: redis.Redis) -> list[str]:
    """The task id of every message in the queue or in kombu's ``unacked`` hash."""
    queued = [json.loads(item) for item in client.lrange(get_settings().queue, 0, -1)]
    unacked = [json.loads(entry)[0] for entry in client.hvals("unacked")]
    indexed = {tag.decode() for tag in client.zrange("unacked_index", 0, -1)}
    assert indexed == {payload["properties"]["delivery_tag"] for payload in unacked}
    return sorted(payload["headers"]["id"] for payload in queued + unacked)


class ConnectionCut:
    """Every Redis command of this process after the first ``allowed`` fails before it is
    sent, as if the worker died there (the closing connection cannot restore anything)."""

    def __init__(self, monkeypatch, allowed: int) -> None:
        self.allowed = allowed
        send = AbstractConnection.send_packed_command

        def cut_after(connection, command, check_health=True):
            if self.allowed <= 0:
                raise redis.ConnectionError("cut by the test")
            self.allowed -= 1
            return send(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", cut_after)


@pytest.mark.parametrize("commands", range(6))
def test_a_drain_cut_off_after_any_command_leaves_each_message_queued_or_unacked(
        commands, redis_broker, monkeypatch):
    ids = queue_events(redis_broker, 5)
    bound = broker_drain.queue_binding(get_settings().queue)  # connected before the cut
    bound.channel._size(bound.name)
    with monkeypatch.context() as patch:
        ConnectionCut(patch, commands)
        with contextlib.suppress(redis.ConnectionError):
            broker_drain.drain(get_settings().queue, 500, 2000)
    assert where_each_message_is(redis_broker) == sorted(ids)


def test_drained_messages_are_acked_requeued_or_given_back_as_kombu_records_them(
        redis_broker):
    ids = queue_events(redis_broker, 12)
    drained = broker_drain.drain(get_settings().queue, 500, 4)  # more taken than fit: given back
    assert [message.queued.headers["id"] for message in drained] == ids[:4]
    assert redis_broker.llen(get_settings().queue) == 8
    assert redis_broker.hlen("unacked") == redis_broker.zcard("unacked_index") == 4
    drained[0].error = RuntimeError("its ops could not be handed over")
    broker_drain.settle(drained)
    assert redis_broker.hlen("unacked") == redis_broker.zcard("unacked_index") == 0
    assert where_each_message_is(redis_broker) == sorted([ids[0], *ids[4:]])
    # The rest in their order; the failed one is back as from a lost worker: left for Celery
    # to run alone.
    again = broker_drain.drain(get_settings().queue, 500, 2000)
    assert [message.queued.headers["id"] for message in again] == ids[4:]
    (left,) = [json.loads(item) for item in redis_broker.lrange(get_settings().queue, 0, -1)]
    assert left["headers"]["id"] == ids[0]
    assert left["properties"]["delivery_info"]["redelivered"]
    broker_drain.settle(again)
    assert where_each_message_is(redis_broker) == [ids[0]]


def pool_processes(worker) -> list[int]:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def test_pool_processes_killed_mid_drain_again_and_again_lose_no_message(
        private_redis, cio_fake, worker_process, wait_for):
    count, kills = 3000, 40  # 12 kills did not catch the old two-step take; 40 did, twice
    use_broker(private_redis.url)
    try:
        for number in range(count):
            broker_publish.publish_ops([Event(f"p{number % 7}", "clicked",
                                              {"n": number}).to_dict()])
        env = {"CIO_TEST_REDIS_BROKER": private_redis.url,
               "CIO_TEST_VISIBILITY_TIMEOUT": SCALED_VISIBILITY}
        worker = worker_process(env=env)
        wait_for(lambda: cio_fake.received >= 1, timeout=60)
        for _ in range(kills):  # a pool process spends most of its time draining and acking
            time.sleep(random.uniform(0.05, 0.4))
            for pid in pool_processes(worker):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pool_processes(worker), timeout=30)
        # Whatever the dead drains held comes back after the visibility timeout.
        wait_for(lambda: len(cio_fake.store.events) == count, timeout=180)
        client = redis.Redis.from_url(private_redis.url)
        wait_for(lambda: not client.llen(get_settings().queue) and not client.hlen("unacked"),
                 timeout=60)
    finally:
        use_broker(BROKERS["redis"])
    assert sorted(event["data"]["n"] for event in cio_fake.store.events) == list(range(count))
    assert not DeadLetter.objects.exists()
