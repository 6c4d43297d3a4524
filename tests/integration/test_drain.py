"""A worker drains queued messages into few requests, on Redis and RabbitMQ."""

import time

import pytest

from django_cio import producer
from django_cio.models import DeadLetter
from django_cio.operations import Event

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
