"""End to end: commit -> broker (Redis and RabbitMQ) -> a real Celery worker -> fake Track API."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

import django_cio
from django_cio.models import DeadLetter, Outbox
from django_cio.tasks import relay_outbox
from tests.celery_app import BROKERS
from tests.conftest import free_port, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_identify_and_events_are_delivered_end_to_end(broker, worker, published, wait_for):
    fake = worker.cio_fake
    with transaction.atomic():
        django_cio.identify("u1", email="u1@example.com", plan="pro")
        for step in ("signup", "verified", "ordered"):
            django_cio.track("u1", step, source="test")
    wait_for(lambda: len(fake.store.events) == 3)
    assert fake.store.people["u1"] == {"email": "u1@example.com", "plan": "pro"}
    assert [event["name"] for event in fake.store.events] == ["signup", "verified", "ordered"]
    assert len(published) == 1  # one message for the transaction
    assert fake.store.stats()["ops_per_request"] == {"4": 1}  # and one request


def test_a_rolled_back_transaction_is_never_delivered(worker, wait_for):
    fake = worker.cio_fake
    with pytest.raises(RuntimeError), transaction.atomic():
        django_cio.track("u1", "rolled_back")
        raise RuntimeError
    django_cio.track("u1", "marker")
    wait_for(lambda: fake.store.events)
    assert [event["name"] for event in fake.store.events] == ["marker"]


def test_a_server_error_then_success_delivers_once_with_the_same_event_id(worker, wait_for):
    fake = worker.cio_fake
    fake.fail_next(503)
    django_cio.track("u1", "signup")
    wait_for(lambda: fake.store.events)
    statuses = [request["status"] for request in fake.store.requests]
    assert statuses == [503, 200]
    sent_ids = [request["body"]["batch"][0]["id"] for request in fake.store.requests]
    assert sent_ids[0] == sent_ids[1] == fake.store.events[0]["id"]
    assert fake.store.stats()["duplicate_event_ids"] == 0


def test_429_no_request_before_retry_after_elapses(worker, wait_for):
    fake = worker.cio_fake
    fake.configure(retry_after=2)
    fake.fail_next(429)
    django_cio.track("u1", "signup")
    wait_for(lambda: fake.store.events)
    first, second = fake.store.requests
    assert (first["status"], second["status"]) == (429, 200)
    assert second["at"] - first["at"] >= 1.95


def test_207_partial_only_the_refused_ops_become_dead_letters(worker, wait_for):
    fake = worker.cio_fake
    fake.configure(refuse=["bad"])
    with transaction.atomic():
        django_cio.identify("good", plan="pro")
        django_cio.identify("bad", plan="pro")
        django_cio.track("good", "signup")
    wait_for(DeadLetter.objects.exists)
    wait_for(lambda: fake.store.events)
    assert list(fake.store.people) == ["good"]
    assert list(DeadLetter.objects.values_list("person_id", "status")) == [("bad", 207)]


def test_replayed_dead_letters_are_delivered(worker, wait_for):
    fake = worker.cio_fake
    fake.configure(refuse=["u1"])
    django_cio.track("u1", "signup")
    wait_for(DeadLetter.objects.exists)
    fake.configure(refuse=[])
    call_command("cio_replay", "--all")
    wait_for(lambda: fake.store.events)
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_broker_down_the_request_succeeds_and_the_relay_delivers_later(
    broker_kind, private_redis, cio_fake, wait_for, request
):
    live = private_redis.url if broker_kind == "redis" else BROKERS["rabbitmq"]
    use_broker(live)
    request.addfinalizer(lambda: use_broker(BROKERS["redis"]))
    request.getfixturevalue("worker")
    if broker_kind == "redis":
        private_redis.kill()
    else:  # the shared RabbitMQ stays up: this process loses its way to it instead
        use_broker(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with transaction.atomic():
        django_cio.identify("u1", plan="pro")
        django_cio.track("u1", "signup")
    assert Outbox.objects.count() == 1  # the request went on; the message is safe
    if broker_kind == "redis":
        private_redis.start()  # the broker comes back
    else:
        use_broker(live)
    assert relay_outbox.apply().get() == 1
    wait_for(lambda: cio_fake.store.events, timeout=60)
    assert list(cio_fake.store.people) == ["u1"] and not Outbox.objects.exists()


def test_a_long_retry_wait_is_parked_then_relayed_and_delivered(settings, worker, wait_for):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RETRY_AFTER_MAX": 600}
    fake = worker.cio_fake
    fake.configure(retry_after=300)
    fake.fail_next(429)
    django_cio.track("u1", "signup")
    row = wait_for(Outbox.objects.first)
    assert row.not_before > timezone.now() + timedelta(seconds=250)
    assert relay_outbox.apply().get() == 0  # not due yet
    Outbox.objects.update(not_before=timezone.now())  # five minutes later
    assert relay_outbox.apply().get() == 1
    wait_for(lambda: fake.store.events)
    statuses = [request["status"] for request in fake.store.requests]
    assert statuses == [429, 200] and fake.store.stats()["duplicate_event_ids"] == 0
