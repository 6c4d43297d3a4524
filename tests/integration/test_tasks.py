"""The delivery task against the fake Track API (real HTTP) and the real Redis broker.

The task runs in this process (``deliver.apply``); retries are real messages on the broker,
recorded by the ``published`` fixture. End-to-end runs with a worker are in integration/.
"""

import time
import uuid
from datetime import datetime, timezone
from unittest.mock import ANY

import pytest
from django.dispatch import receiver

from django_cio import ratelimit, tasks
from django_cio.delivery import dead_letters, retry
from django_cio.models import DeadLetter, Outbox
from django_cio.operations import AnonymousEvent, Event, Identify
from django_cio.signals import post_send, pre_send

pytestmark = pytest.mark.django_db(transaction=True)


def deliver(*ops, failures=0):
    tasks.deliver.apply(args=([op.to_dict() for op in ops],), kwargs={"failures": failures})


def countdown(detail, since=None):
    """Seconds from ``since`` (default: now) to the message's ETA."""
    eta = datetime.fromisoformat(detail["eta"])
    return (eta - (since or datetime.now(timezone.utc))).total_seconds()


def test_ops_are_delivered_in_one_batch_request(cio_fake, published):
    deliver(Identify("u1", {"email": "u1@example.com"}), Event("u1", "signup", {}))
    assert cio_fake.store.people["u1"]["email"] == "u1@example.com"
    assert cio_fake.store.stats()["ops_per_request"] == {"2": 1}
    assert published == [] and not DeadLetter.objects.exists()


def test_without_batch_each_op_is_its_own_v1_request(settings, cio_fake):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "BATCH": False}
    deliver(Identify("u1", {}), Event("u1", "signup", {}))
    assert [request["path"] for request in cio_fake.store.requests] == [
        "/api/v1/customers/u1", "/api/v1/customers/u1/events"
    ]


def test_ops_refused_in_a_207_become_dead_letters_and_the_rest_is_delivered(cio_fake, published):
    cio_fake.configure(refuse=["bad"])
    deliver(Identify("good", {}), Identify("bad", {"email": "bad@example.com"}),
            Event("good", "x", {}))
    assert set(cio_fake.store.people) == {"good"} and len(cio_fake.store.events) == 1
    letter = DeadLetter.objects.get()
    assert (letter.kind, letter.person_id, letter.status) == ("identify", "bad", 207)
    assert letter.reason == "invalid (identifiers.id)"
    assert letter.op["attributes"] == {"email": "bad@example.com"}  # replayable as it was
    assert published == []  # nothing retried


def test_a_server_error_retries_only_undelivered_ops_with_their_event_ids(settings, cio_fake,
                                                                          published, caplog):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "BATCH": False}
    cio_fake.fail_next(0, 503)  # the identify gets through, the event does not
    event = Event("u1", "signup", {})
    started = datetime.now(timezone.utc)
    deliver(Identify("u1", {}), event, Event("u1", "later", {}))
    assert list(cio_fake.store.people) == ["u1"] and cio_fake.store.events == []
    assert [[op["kind"] for op in message] for message in published] == [["event", "event"]]
    assert published[0][0]["id"] == event.id
    assert published.details[0]["kwargs"] == {"failures": 1}
    # Full jitter over 2 ** 1 seconds, from before the delivery: a wait drawn near 0 would be
    # in the past by the time it is measured from now.
    assert 0 <= countdown(published.details[0], since=started) <= 2.5
    # An unreachable or failing Customer.io shows in the worker's log, once per attempt.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w.split(" in ")[0] for w in warnings] == [
        "customerio: 2 op(s) not sent (server error); retry 1"]


def test_429_waits_for_retry_after_without_using_the_retry_budget(cio_fake, published):
    cio_fake.configure(retry_after=7)
    cio_fake.fail_next(429)
    deliver(Event("u1", "signup", {}), failures=3)
    assert published.details[0]["kwargs"] == {"failures": 3}
    assert 5.5 <= countdown(published.details[0]) <= 7.5


def test_retry_after_is_capped(settings, cio_fake, published):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RETRY_AFTER_MAX": 2}
    cio_fake.configure(retry_after=3600)
    cio_fake.fail_next(429)
    deliver(Event("u1", "signup", {}))
    assert 0.5 <= countdown(published.details[0]) <= 2.5


def test_a_wait_too_long_for_the_broker_is_parked_in_the_outbox(settings, cio_fake, published):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RETRY_AFTER_MAX": 600}
    cio_fake.configure(retry_after=300)
    cio_fake.fail_next(429)
    event = Event("u1", "signup", {})
    deliver(event)
    assert published == []
    row = Outbox.objects.get()
    assert row.ops == [event.to_dict()]
    assert 290 <= (row.not_before - row.created_at).total_seconds() <= 310


def test_retries_exhausted_become_dead_letters(settings, cio_fake, published):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "MAX_RETRIES": 2}
    cio_fake.fail_next(503)
    deliver(Event("u1", "signup", {}), failures=2)
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.status, letter.attempts) == ("server error", 503, 3)
    assert published == []


def test_a_permanent_error_dead_letters_the_requests_ops(cio_fake, published):
    cio_fake.fail_next(400)
    deliver(Identify("u1", {}), Event("u1", "signup", {}))
    assert sorted(DeadLetter.objects.values_list("kind", "status")) == [
        ("event", 400), ("identify", 400)
    ]
    assert published == []


def test_a_malformed_message_becomes_dead_letters_not_a_crash(cio_fake, published):
    tasks.deliver.apply(args=([{"kind": "bogus"}, "junk", Identify("u1", {}).to_dict()],))
    assert list(cio_fake.store.people) == ["u1"]
    reasons = sorted(DeadLetter.objects.values_list("reason", flat=True))
    assert reasons == ["malformed: operation: kind is missing: an operation must be a mapping",
                       "malformed: operation: kind is not a known operation kind"]
    assert DeadLetter.objects.filter(op={"raw": "junk"}).exists()


def test_anonymous_events_go_by_v1_next_to_a_batch(cio_fake):
    deliver(Identify("u1", {}), AnonymousEvent("visitor-1", "viewed", {}))
    assert [request["path"] for request in cio_fake.store.requests] == [
        "/api/v2/batch", "/api/v1/events"
    ]


def test_pre_send_receivers_may_drop_and_change_ops_and_post_send_reports_each(cio_fake):
    results = []

    @receiver(pre_send, weak=False)
    def only_identifies(sender, ops, **kwargs):
        ops[:] = [Identify(op.person_id, {"vip": True}) for op in ops if op.kind == "identify"]

    @receiver(post_send, weak=False)
    def report(sender, results=(), **kwargs):
        results_seen.extend(results)

    results_seen = results
    try:
        deliver(Identify("u1", {}), Event("u1", "signup", {}))
    finally:
        pre_send.disconnect(only_identifies)
        post_send.disconnect(report)
    assert cio_fake.store.people["u1"] == {"vip": True} and cio_fake.store.events == []
    assert [(result.op.kind, result.status) for result in results] == [("identify", "sent")]


def test_a_message_redelivered_too_often_is_recognised():
    task_id = str(uuid.uuid4())
    assert [retry.too_many_deliveries(task_id) for _ in range(retry.MAX_DELIVERIES)] == [
        False
    ] * (retry.MAX_DELIVERIES - 1) + [True]


def test_backoff_is_full_jitter_under_the_cap(settings):
    from django_cio.conf import get_settings

    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RETRY_BACKOFF_MAX": 10}
    cio = get_settings()
    waits = [retry.backoff(failures, cio) for failures in range(1, 12) for _ in range(50)]
    assert min(waits) >= 0 and max(waits) <= 10
    assert max(waits) > 5  # not stuck low


@pytest.fixture
def crashing_receiver():
    def crash(sender, ops, **kwargs):
        raise RuntimeError("boom with secret@example.com")

    pre_send.connect(crash, weak=False)
    yield
    pre_send.disconnect(crash)


def test_a_crash_is_retried_later_and_logged_without_details(
    cio_fake, published, crashing_receiver, caplog
):
    event = Event("u1", "signup", {"email": "secret@example.com"})
    deliver(event, failures=1)
    assert published == [[event.to_dict()]]
    assert published.details[0]["kwargs"] == {"failures": 2}
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == ["customerio: delivery crashed (RuntimeError); retrying"]


def test_a_worker_without_credentials_says_which_setting_is_missing(settings, cio_fake,
                                                                   published, caplog):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": None}
    deliver(Event("u1", "signup", {}))
    assert len(published) == 1  # retried, not lost: the worker may get its settings right
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "CUSTOMERIO['SITE_ID']" in errors[0], errors


def test_a_crash_past_the_retry_budget_is_a_dead_letter(settings, cio_fake, published,
                                                        crashing_receiver):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "MAX_RETRIES": 1}
    deliver(Event("u1", "signup", {}), failures=1)
    assert published == []
    assert DeadLetter.objects.get().reason == "crashed (RuntimeError)"


def test_a_retry_the_broker_cannot_take_is_parked(settings, cio_fake, dead_broker):
    cio_fake.fail_next(503)
    event = Event("u1", "signup", {})
    deliver(event)
    row = Outbox.objects.get()
    assert (row.ops, row.failures) == ([event.to_dict()], 1)


def test_a_raising_post_send_receiver_does_not_resend_delivered_ops(cio_fake, published):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    post_send.connect(broken, weak=False)
    try:
        deliver(Event("u1", "signup", {}))
    finally:
        post_send.disconnect(broken)
    assert len(cio_fake.store.events) == 1
    assert published == [] and not DeadLetter.objects.exists()


def test_a_malformed_failure_count_counts_as_zero(cio_fake, published):
    tasks.deliver.apply(args=([Event("u1", "signup", {}).to_dict()],),
                        kwargs={"failures": "many"})
    assert len(cio_fake.store.events) == 1 and published == []


def test_ops_the_shared_limit_has_no_room_for_go_back_without_using_the_budget(
    settings, published
):
    from django_cio.fakeserver import FakeTrackAPI
    from django_cio.ratelimit import get_limiter

    # A workspace of its own: its limit, one request every 10 s, is nobody else's.
    with FakeTrackAPI(site_id=f"throttled-{uuid.uuid4()}") as fake:
        settings.CUSTOMERIO = {**settings.CUSTOMERIO, "BATCH": False, "RATE_LIMIT": "1/10s",
                               "SITE_ID": fake.site_id, "API_KEY": fake.api_key,
                               "TRACK_URL": fake.url}
        deliver(Event("u1", "first", {}), Event("u1", "second", {}), failures=2)
        get_limiter().client.delete(get_limiter().key)
    assert [event["name"] for event in fake.store.events] == ["first"]
    assert [[op["name"] for op in message] for message in published] == [["second"]]
    assert published.details[0]["kwargs"] == {"failures": 2}
    assert 8 <= countdown(published.details[0]) <= 10 * (1 + ratelimit.HEADROOM) + 0.1


def test_dead_letters_keep_any_op_and_any_attempt_count():
    """The paths that dead-letter raw ops (a worker lost too often, a crash out of retries) may
    hold what a JSON column refuses: they must not loop on a database error."""
    dead_letters.store([("not an op", "lost", None),
                         ({"kind": "identify", "person_id": "a\x00"}, "lost", None)], 2**40)
    stored = list(DeadLetter.objects.order_by("id"))
    assert [letter.op for letter in stored] == [
        {"raw": "not an op"}, {"raw": ascii({"kind": "identify", "person_id": "a\x00"})}]
    assert {letter.attempts for letter in stored} == {2**31 - 2}


def test_a_crash_after_a_retry_was_handed_over_does_not_send_it_again(cio_fake, published,
                                                                     monkeypatch):
    cio_fake.fail_next(503)

    def dead_letters_down(*args, **kwargs):
        raise RuntimeError("database down")

    # The crash comes after the retry is published.
    monkeypatch.setattr(dead_letters, "store", dead_letters_down)
    deliver(Event("u1", "a", {}))
    assert len(published) == 1  # the retry of the 503, not a second one after the crash


def test_refused_credentials_keep_every_op_until_they_work(settings, cio_fake, published):
    # A rotated key: nothing is dead-lettered, the ops wait (with their retry budget), the
    # next start's checks and cio_status say so, and new credentials start afresh.
    from django_cio.checks import check_credentials

    working = settings.CUSTOMERIO
    settings.CUSTOMERIO = {**working, "API_KEY": "rotated-away"}
    deliver(Identify("u1", {"plan": "pro"}), Event("u1", "signup", {}), failures=1)
    assert not DeadLetter.objects.exists()
    assert [[op["kind"] for op in message] for message in published] == [["identify", "event"]]
    assert published.details[0]["kwargs"] == {"failures": 1}
    assert [message.id for message in check_credentials()] == ["django_cio.E008"]
    refused_requests = cio_fake.store.stats()["requests"]
    deliver(Event("u1", "while_refused", {}))  # held without asking Customer.io again
    assert cio_fake.store.stats()["requests"] == refused_requests
    assert not DeadLetter.objects.exists() and len(published) == 2

    settings.CUSTOMERIO = working  # the key is fixed
    assert check_credentials() == []
    tasks.deliver.apply(args=(published[0] + published[1],))
    assert cio_fake.store.people["u1"]["plan"] == "pro"
    assert [event["name"] for event in cio_fake.store.events] == ["signup", "while_refused"]


def test_a_refusal_that_goes_away_is_noticed_by_the_next_probe(cio_fake, published,
                                                                 monkeypatch):
    from django_cio import credentials

    monkeypatch.setattr(credentials, "PROBE_EVERY", 1)
    cio_fake.fail_next(403)  # a workspace briefly forbidden, then fine again
    deliver(Event("u1", "first", {}))
    assert credentials.refusal() == {"status": 403, "since": ANY}
    time.sleep(1.1)  # the next probe may go
    deliver(Event("u1", "second", {}))
    assert credentials.refusal() is None
    assert [event["name"] for event in cio_fake.store.events] == ["second"]
    assert not DeadLetter.objects.exists()
