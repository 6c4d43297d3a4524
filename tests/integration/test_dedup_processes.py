"""Identify dedup is shared by worker processes through the cache."""

import pytest

import django_cio
from django_cio.conf import get_settings

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_an_unchanged_identify_handled_by_another_process_costs_no_request(
    settings, cio_fake, worker_process, published, wait_for
):
    first_queue = get_settings().queue
    second_queue = f"{first_queue}-second"
    worker_process(first_queue)
    worker_process(second_queue)  # a process that has never seen this person

    django_cio.identify("u1", email="u1@example.com", plan="pro")
    wait_for(lambda: cio_fake.store.people, timeout=60)

    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "QUEUE": second_queue}
    django_cio.identify("u1", plan="pro", email="u1@example.com")  # a re-save, unchanged
    django_cio.track("u1", "marker")  # delivered after the identify was looked at
    wait_for(lambda: cio_fake.store.events, timeout=60)
    assert cio_fake.store.stats()["ops"] == {"identify": 1, "event": 1}
    assert [request["status"] for request in cio_fake.store.requests] == [200, 200]
