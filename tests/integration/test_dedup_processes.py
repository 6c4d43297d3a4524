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


def identify_requests(fake):
    """The attributes of each identify the fake received (v2 batch items)."""
    found = []
    for request in fake.store.requests:
        body = request["body"]
        for item in body.get("batch", [body] if "identifiers" in body else []):
            if item.get("action") == "identify":
                found.append(item.get("attributes"))
    return found


def test_a_resave_after_create_costs_no_request_and_a_change_sends_only_itself(
    cio_fake, worker_process, published, wait_for
):
    worker_process()
    attributes = {f"field{n}": f"value {n}" for n in range(10)}
    django_cio.identify("u1", created_at=1700000000, **attributes)  # the create
    django_cio.track("u1", "created")
    wait_for(lambda: cio_fake.store.events, timeout=60)
    django_cio.identify("u1", **attributes)  # a re-save: Customer.io has all of it
    django_cio.track("u1", "resaved")
    wait_for(lambda: len(cio_fake.store.events) == 2, timeout=60)
    assert len(identify_requests(cio_fake)) == 1

    django_cio.identify("u1", **{**attributes, "field7": "changed"})
    wait_for(lambda: len(identify_requests(cio_fake)) == 2, timeout=60)
    assert identify_requests(cio_fake)[-1] == {"field7": "changed"}
    assert cio_fake.store.people["u1"] == {"created_at": 1700000000, **attributes,
                                           "field7": "changed"}


def test_two_logins_drained_together_merge_both_visitors(
    cio_fake, worker_process, published, wait_for
):
    for visitor in ("visitor-1", "visitor-2"):  # queued before any worker runs
        django_cio.track_anonymous(visitor, "viewed")
        django_cio.identify("u1", plan="pro", anonymous_id=visitor)
    assert len(published) == 4
    worker_process()
    wait_for(lambda: len(identify_requests(cio_fake)) == 2, timeout=60)
    assert [body["anonymous_id"] for body in identify_requests(cio_fake)] == [
        "visitor-1", "visitor-2"]
    order = [request["body"].get("anonymous_id") or "identify"
             for request in cio_fake.store.requests]
    assert order == ["visitor-1", "identify", "visitor-2", "identify"]
