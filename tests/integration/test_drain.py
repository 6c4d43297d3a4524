"""A worker drains queued messages into few requests, on Redis and RabbitMQ."""

import contextlib
import os
import signal
import socket
import time

import kombu
import pytest

from django_cio.broker import drain as broker_drain
from django_cio.broker import messages
from django_cio.broker import publish as broker_publish
from django_cio.conf import get_settings
from django_cio.models import DeadLetter
from django_cio.operations import Event
from django_cio.tasks import deliver
from tests.celery_app import BROKERS
from tests.conftest import purge_queue, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def queue_events(count, prefix="p", countdown=0):
    events = [Event(f"{prefix}{number}", "viewed", {"n": number}) for number in range(count)]
    for event in events:
        broker_publish.publish_ops([event.to_dict()], countdown=countdown)
    return events


def test_a_backlog_is_drained_into_few_requests_and_delivered_once(
    broker, cio_fake, published, wait_for, request
):
    queue_events(120)  # waiting before the worker starts
    request.getfixturevalue("worker")
    wait_for(lambda: len(cio_fake.store.events) == 120)
    stats = cio_fake.store.stats()
    assert stats["requests"] <= 6  # not 120
    assert stats["duplicate_event_ids"] == 0
    time.sleep(0.5)  # anything left unacknowledged would come back as a duplicate
    assert len(cio_fake.store.events) == 120


def test_a_retry_waiting_for_its_countdown_is_handed_back_not_sent_early(
    cio_fake, published, wait_for, request
):
    (retry,) = queue_events(1, prefix="retry", countdown=2)
    due = time.time() + 2
    queue_events(20)
    request.getfixturevalue("worker")
    wait_for(lambda: len(cio_fake.store.events) == 21)
    received = {event["id"]: event["received_at"] for event in cio_fake.store.events}
    assert received[retry.id] >= due - 0.05
    assert not DeadLetter.objects.exists()
    assert cio_fake.store.stats()["duplicate_event_ids"] == 0


def test_a_killed_worker_loses_none_of_the_messages_it_drained(
    cio_fake, worker_process, wait_for, request
):
    # RabbitMQ returns a dead consumer's unacknowledged messages at once; on Redis they come
    # back after the visibility timeout (300 s documented), which the reliability suite covers.
    use_broker(BROKERS["rabbitmq"])
    request.addfinalizer(lambda: (purge_queue(), use_broker(BROKERS["redis"])))
    purge_queue()
    events = queue_events(200)
    cio_fake.configure(latency_ms=3000)  # the worker is caught mid-request, holding a batch
    first = worker_process(broker="rabbitmq")
    wait_for(lambda: cio_fake.received, timeout=60)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # The request the dead worker left in flight must not deliver its batch either.
    cio_fake.configure(error_rate=1.0)
    wait_for(lambda: cio_fake.store.requests, timeout=30)
    assert [r["status"] for r in cio_fake.store.requests] == [503] and not cio_fake.store.events
    cio_fake.configure(error_rate=0.0, latency_ms=0)
    worker_process(broker="rabbitmq")
    wait_for(lambda: len(cio_fake.store.events) == 200, timeout=60)
    assert {event["id"] for event in cio_fake.store.events} == {event.id for event in events}


# RabbitMQ: the drain pipelines basic.get requests on its own connection. What it did not keep
# must be ready in the queue when it returns, never left unacknowledged on its channel.


@pytest.fixture
def rabbit_queue(request):
    """A classic queue of this test's own on RabbitMQ, that this process publishes to."""
    name = f"{get_settings().queue}-drain"
    use_broker(BROKERS["rabbitmq"])
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        kombu.Queue(name, durable=True)(connection.default_channel).declare()
        connection.default_channel.queue_purge(name)
        yield name
        broker_drain.reconnect()
        with contextlib.suppress(Exception):
            connection.default_channel.queue_delete(name)
    use_broker(BROKERS["redis"])


def publish(queue: str, number: int, ops: int = 1) -> None:
    events = [Event(f"p{number}", "viewed", {"n": number, "op": op}).to_dict()
              for op in range(ops)]
    deliver.apply_async((events,), queue=kombu.Queue(queue, no_declare=True),
                        exchange="", routing_key=queue, producer=broker_publish.producer())


def ready(queue: str) -> int:
    """Messages ready in ``queue`` (not those delivered and unacknowledged)."""
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count


def numbers(messages) -> list[int]:
    return [message.ops[0]["data"]["n"] for message in messages]


def assert_nothing_left_unacknowledged(queue: str, expected_ready: int) -> None:
    """Closing the drain's connection returns whatever it still holds unacknowledged: the
    ready count must not move."""
    assert ready(queue) == expected_ready
    broker_drain.reconnect()
    time.sleep(0.2)
    assert ready(queue) == expected_ready


def test_a_rabbitmq_drain_takes_max_messages_and_leaves_the_rest_ready(rabbit_queue):
    for number in range(100):
        publish(rabbit_queue, number)
    drained = broker_drain.drain(rabbit_queue, 37, 2000)
    assert numbers(drained) == list(range(37))  # the head of the queue, in order
    assert ready(rabbit_queue) == 63  # while the 37 are held, unacknowledged
    broker_drain.settle(drained)
    assert_nothing_left_unacknowledged(rabbit_queue, 63)
    drained = broker_drain.drain(rabbit_queue, 500, 2000)  # the same connection, made again
    assert numbers(drained) == list(range(37, 100))
    broker_drain.settle(drained)
    assert_nothing_left_unacknowledged(rabbit_queue, 0)


def test_a_rabbitmq_drain_stops_at_max_ops_and_hands_back_what_it_took_past_it(rabbit_queue):
    publish(rabbit_queue, 0, ops=1)
    publish(rabbit_queue, 1, ops=4)  # larger than the first: taken past max_ops with others
    for number in range(2, 30):
        publish(rabbit_queue, number)
    drained = broker_drain.drain(rabbit_queue, 500, 5)
    assert numbers(drained) == [0, 1] and sum(len(message.ops) for message in drained) == 5
    assert ready(rabbit_queue) == 28
    broker_drain.settle(drained)
    assert_nothing_left_unacknowledged(rabbit_queue, 28)
    rest = broker_drain.drain(rabbit_queue, 500, 2000)
    assert sorted(numbers(rest)) == list(range(2, 30))  # handed back copies, none lost
    assert not any(messages.came_back(message.queued) for message in rest)
    broker_drain.settle(rest)
    assert_nothing_left_unacknowledged(rabbit_queue, 0)


def test_a_message_arriving_while_a_rabbitmq_drain_runs_is_taken_or_left_ready(
        rabbit_queue, monkeypatch):
    for number in range(20):
        publish(rabbit_queue, number)
    as_message = messages.as_message
    arrived = []

    def publish_meanwhile(queued):
        if not arrived:  # mid-drain, with basic.get requests in flight
            arrived.append(publish(rabbit_queue, 20))
        return as_message(queued)

    monkeypatch.setattr(messages, "as_message", publish_meanwhile)
    drained = broker_drain.drain(rabbit_queue, 500, 2000)
    assert arrived and numbers(drained)[:20] == list(range(20))
    left = 21 - len(drained)
    assert left in (0, 1)
    broker_drain.settle(drained)
    assert_nothing_left_unacknowledged(rabbit_queue, left)


def test_a_rabbitmq_drain_whose_connection_dies_midway_leaves_every_message_queued(
        rabbit_queue, monkeypatch):
    for number in range(50):
        publish(rabbit_queue, number)
    as_message = messages.as_message
    seen = []

    def die_midway(queued):
        seen.append(queued)
        if len(seen) == 15:  # the connection drops with messages taken and requests in flight
            queued.channel.connection.transport.sock.shutdown(socket.SHUT_RDWR)
        return as_message(queued)

    monkeypatch.setattr(messages, "as_message", die_midway)
    with pytest.raises(OSError):  # whatever py-amqp raises for the dead socket
        broker_drain.drain(rabbit_queue, 500, 2000)
    wait_for_ready = time.monotonic() + 10
    while ready(rabbit_queue) != 50 and time.monotonic() < wait_for_ready:
        time.sleep(0.05)
    assert ready(rabbit_queue) == 50
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        bound = kombu.Queue(rabbit_queue, no_declare=True)(connection.default_channel)
        back = [bound.get(accept={"json"}) for _ in range(50)]
        assert bound.get() is None
        # The ones the drain took come back redelivered: a drain hands those back to run alone.
        assert sum(bool(queued.delivery_info["redelivered"]) for queued in back) >= 15
        assert sorted(messages.as_message(queued).ops[0]["data"]["n"]
                      for queued in back) == list(range(50))
        for queued in back:
            queued.ack()
    publish(rabbit_queue, 50)  # the drain's dead connection was dropped: the next one connects
    again = broker_drain.drain(rabbit_queue, 500, 2000)
    assert numbers(again) == [50]
    broker_drain.settle(again)
