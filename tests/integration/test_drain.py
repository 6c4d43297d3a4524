"""A worker drains queued messages into few requests, on Redis and RabbitMQ."""

import os
import signal
import time

import pytest

from django_cio import producer
from django_cio.models import DeadLetter
from django_cio.operations import Event
from tests.celery_app import BROKERS
from tests.conftest import purge_queue, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def queue_events(count, prefix="p", countdown=0):
    events = [Event(f"{prefix}{number}", "viewed", {"n": number}) for number in range(count)]
    for event in events:
        producer.publish_to_broker([event.to_dict()], countdown=countdown)
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
