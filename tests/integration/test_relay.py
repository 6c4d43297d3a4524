"""The Outbox relay on PostgreSQL: due rows go to the broker once, even with relays racing."""

import threading
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection, connections
from django.utils import timezone

from django_cio.broker import relay
from django_cio.conf import get_settings
from django_cio.models import Outbox
from django_cio.operations import Identify
from django_cio.tasks import relay_outbox
from tests.celery_app import app

pytestmark = pytest.mark.django_db(transaction=True)


def add_rows(count, **fields):
    Outbox.objects.bulk_create(
        Outbox(ops=[Identify(f"u{number}", {}).to_dict()], **fields) for number in range(count)
    )


def test_due_rows_are_published_and_deleted_and_later_ones_wait(published):
    add_rows(3, failures=2)
    # Built once: two identifies made a second apart carry different times (a flake, once).
    later = Identify("later", {}).to_dict()
    Outbox.objects.create(ops=[later], not_before=timezone.now() + timedelta(minutes=5))
    assert relay_outbox.apply().get() == 3
    assert sorted(message[0]["person_id"] for message in published) == ["u0", "u1", "u2"]
    assert published.details[0]["kwargs"] == {"failures": 2}  # the retry budget travels on
    assert list(Outbox.objects.values_list("ops", flat=True)) == [[later]]


def test_rows_stay_while_the_broker_is_down(published, dead_broker):
    add_rows(5)
    assert relay.relay() == 0
    assert Outbox.objects.count() == 5


@pytest.mark.parametrize("claim", [relay.relay_locked, relay.relay_leased],
                         ids=["skip-locked", "lease"])
def test_concurrent_relays_never_send_a_row_twice(published, claim):
    if claim is relay.relay_locked and not connection.features.has_select_for_update_skip_locked:
        pytest.skip("this database cannot skip locked rows (the lease variant covers it)")
    add_rows(300)

    def relay_until_empty():
        try:
            while claim("default", 20):
                pass
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay_until_empty) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    people = [message[0]["person_id"] for message in published]
    assert len(people) == 300 and len(set(people)) == 300
    assert not Outbox.objects.exists()


def relay_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "django-cio-relay"]


def test_a_worker_started_in_a_thread_stops_its_relay_when_it_stops():
    # celery.contrib.testing's start_worker (the way projects test their tasks) terminates
    # the worker instead of stopping it. Its relay thread went on relaying the test database
    # into later tests' queues.
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      queues=[get_settings().queue], shutdown_timeout=30,
                      loglevel="WARNING"):  # its default, ERROR, would stay on the root logger
        assert len(relay_threads()) == 1
    assert relay_threads() == []
