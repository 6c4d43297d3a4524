"""Identify dedup against the real Redis cache (django-redis)."""

import threading
import time

import pytest
from django.core.cache import caches
from django_redis import get_redis_connection

from django_cio import dedup, packing
from django_cio.operations import AnonymousEvent, Delete, Event, Identify, Merge, Person
from tests.integration.test_tasks import deliver

pytestmark = pytest.mark.django_db(transaction=True)


def shape(ops):
    return [(op.kind, op.person_id, getattr(op, "attributes", None)) for op in ops]


def sent(*ops):
    """What a delivery does around a 2xx: claim, forget, send (here: nothing), remember."""
    kept = in_flight(*ops)
    assert dedup.move_epochs(kept)  # answered
    dedup.remember(kept)
    return kept


def in_flight(*ops):
    """A delivery whose request has not been answered yet: claimed, not remembered."""
    kept = dedup.drop_seen(list(ops))
    assert dedup.move_epochs(kept)
    dedup.forget(kept)
    return kept


def identify_bodies(fake):
    """The attributes of each identify the fake received, in order (v2 batch items)."""
    return [item.get("attributes") for request in fake.store.requests
            for item in request["body"].get("batch", [request["body"]])
            if item.get("action") == "identify"]


# collapse


def test_consecutive_identifies_of_a_person_collapse_in_order():
    ops = [Identify("a", {"x": 1}), Identify("b", {"y": 1}), Identify("a", {"x": 2, "z": 3}),
           Event("a", "e", {}), Identify("a", {"x": 4})]
    assert shape(packing.collapse(ops)) == [
        ("identify", "a", {"x": 2, "z": 3}), ("identify", "b", {"y": 1}),
        ("event", "a", None), ("identify", "a", {"x": 4}),
    ]


def test_identifies_that_together_break_a_limit_are_not_collapsed():
    first = Identify("a", {f"k{n}": n for n in range(200)})
    second = Identify("a", {f"j{n}": n for n in range(200)})
    assert packing.collapse([first, second]) == [first, second]


def test_two_logins_drained_together_each_merge_their_own_visitor():
    first = Identify("p", {"plan": "pro", "anonymous_id": "visitor-1"}, timestamp=100)
    second = Identify("p", {"plan": "pro", "anonymous_id": "visitor-2"}, timestamp=100)
    assert packing.collapse([first, second]) == [first, second]


def test_a_login_is_not_moved_before_its_visitor_s_events():
    ops = [Identify("p", {"plan": "pro"}, timestamp=100),
           AnonymousEvent("visitor-2", "viewed", {}),
           Identify("p", {"anonymous_id": "visitor-2"}, timestamp=100)]
    assert packing.collapse(ops) == ops


def test_a_merged_identify_carries_the_newest_timestamp_and_values():
    older = Identify("p", {"plan": "free"}, timestamp=100)
    newer = Identify("p", {"plan": "pro", "n": 1}, timestamp=105)
    for ops in ([older, newer], [newer, older]):  # a late retry drained after a newer save
        (merged,) = packing.collapse(ops)
        assert (merged.attributes, merged.timestamp) == ({"plan": "pro", "n": 1}, 105)


def test_an_older_identify_s_own_attributes_are_not_sent_as_newer():
    older = Identify("p", {"plan": "free", "x": 1}, timestamp=100)
    newer = Identify("p", {"plan": "pro"}, timestamp=105)
    assert packing.collapse([older, newer]) == [older, newer]


def test_two_logins_delivered_together_both_reach_customerio(cio_fake):
    deliver(AnonymousEvent("visitor-1", "viewed", {}),
            Identify("p", {"plan": "pro", "anonymous_id": "visitor-1"}, timestamp=100),
            AnonymousEvent("visitor-2", "viewed", {}),
            Identify("p", {"plan": "pro", "anonymous_id": "visitor-2"}, timestamp=100))
    assert [body.get("anonymous_id") for body in identify_bodies(cio_fake)] == [
        "visitor-1", "visitor-2"]
    kinds = [(r["path"], r["body"].get("anonymous_id")) for r in cio_fake.store.requests]
    assert kinds == [("/api/v1/events", "visitor-1"), ("/api/v2/batch", None),
                     ("/api/v1/events", "visitor-2"), ("/api/v2/batch", None)]


# per attribute


def test_a_remembered_identify_is_dropped_and_a_changed_one_sent():
    sent(Identify("a", {"plan": "pro", "n": 1}))
    same_other_order = Identify("a", {"n": 1, "plan": "pro"})
    changed = Identify("a", {"plan": "free", "n": 1})
    assert dedup.drop_seen([same_other_order]) == []
    assert shape(dedup.drop_seen([changed])) == [("identify", "a", {"plan": "free"})]


def test_a_resave_without_created_at_after_create_is_dropped():
    sent(Identify("u", {"email": "u@example.com", "created_at": 1700000000}))
    assert dedup.drop_seen([Identify("u", {"email": "u@example.com"})]) == []


def test_only_changed_attributes_are_sent_with_the_identify_s_timestamp():
    attributes = {f"a{n}": n for n in range(10)}
    sent(Identify("u", attributes, timestamp=100))
    (changed,) = dedup.drop_seen([Identify("u", {**attributes, "a3": "new"}, timestamp=101)])
    assert (changed.attributes, changed.timestamp) == ({"a3": "new"}, 101)


def test_an_identify_without_attributes_is_always_sent():
    sent(Identify("u", {}))
    empty = Identify("u", {})
    assert dedup.drop_seen([empty]) == [empty]  # it creates the person


def test_a_b_a_sends_the_third():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    sent(Identify("p", {"v": "b"}, timestamp=101))
    third = Identify("p", {"v": "a"}, timestamp=102)
    assert dedup.drop_seen([third]) == [third]


def test_a_b_in_flight_a_sends_the_last_a():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    b = in_flight(Identify("p", {"v": "b"}, timestamp=101))  # sent, not answered yet
    last_a = Identify("p", {"v": "a"}, timestamp=102)
    assert dedup.drop_seen([last_a]) == [last_a]
    dedup.forget([last_a])
    dedup.remember(b)  # B's answer comes late: its claim is no longer there
    dedup.remember([last_a])
    assert dedup.drop_seen([Identify("p", {"v": "a"}, timestamp=103)]) == []
    b_again = Identify("p", {"v": "b"}, timestamp=104)
    assert dedup.drop_seen([b_again]) == [b_again]


def test_a_b_in_flight_a_leaves_a_at_customerio(cio_fake):
    deliver(Identify("p", {"v": "a"}, timestamp=100))
    cio_fake.configure(latency_ms=1500)
    slow = threading.Thread(target=deliver, args=(Identify("p", {"v": "b"}, timestamp=101),))
    slow.start()
    time.sleep(0.5)  # B is in flight
    cio_fake.configure(latency_ms=0)
    deliver(Identify("p", {"v": "a"}, timestamp=102))
    slow.join()
    assert cio_fake.store.people["p"] == {"v": "a"}
    deliver(Identify("p", {"v": "a"}, timestamp=103))  # and memory says so
    assert cio_fake.store.stats()["ops"] == {"identify": 3}


def test_a_late_older_update_is_not_sent_over_a_newer_unchanged_one():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    sent(Identify("p", {"v": "a"}, timestamp=102))  # unchanged: dropped, but it is newer
    assert dedup.drop_seen([Identify("p", {"v": "b"}, timestamp=101)]) == []  # a late retry


def test_updates_in_the_same_second_in_flight_together_are_not_remembered():
    first = in_flight(Identify("p", {"v": "a"}, timestamp=100))
    second = in_flight(Identify("p", {"v": "b"}, timestamp=100))  # another worker
    dedup.remember(first)
    dedup.remember(second)  # which one Customer.io kept depends on which arrived last
    for value in ("a", "b"):
        again = Identify("p", {"v": value}, timestamp=100)
        assert dedup.drop_seen([again]) == [again]


def test_an_identify_without_timestamp_is_sent_and_blocks_memory_meanwhile():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    old = Identify("p", {"v": "a"}, timestamp=None)  # queued by an older version
    assert dedup.drop_seen([old]) == [old]
    newer = in_flight(Identify("p", {"v": "b"}, timestamp=200))
    dedup.remember([old])
    dedup.remember(newer)  # the old one may still land after it
    again = Identify("p", {"v": "b"}, timestamp=201)
    assert dedup.drop_seen([again]) == [again]


def test_identifies_sent_without_dedup_wipe_what_memory_held_of_the_person():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    backfilled = Identify("p", {"v": "b"}, timestamp=101)
    dedup.forget([backfilled])  # a backfill that opts out of drop_seen
    dedup.remember([backfilled])
    again = Identify("p", {"v": "a"}, timestamp=102)  # a change back: must be sent
    assert dedup.drop_seen([again]) == [again]


def test_an_older_update_sent_without_dedup_makes_the_attribute_unknown():
    sent(Identify("p", {"v": "a"}, timestamp=100))
    sent(Identify("p", {"v": "a"}, timestamp=102))
    late = Identify("p", {"v": "b"}, timestamp=101)
    dedup.forget([late])
    dedup.remember([late])
    again = Identify("p", {"v": "a"}, timestamp=103)
    assert dedup.drop_seen([again]) == [again]


def test_memory_older_than_the_ttl_counts_as_unknown(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "DEDUP_TTL": 1}
    sent(Identify("p", {"v": "a"}, timestamp=100))
    sent(Identify("p", {"v": "a"}, timestamp=101))  # a hit: does not make it younger
    time.sleep(2.1)
    again = Identify("p", {"v": "a"}, timestamp=102)
    assert dedup.drop_seen([again]) == [again]


# forgetting


@pytest.mark.parametrize("forgetting", [Delete("p"), Merge("q", "p")], ids=["delete", "merge"])
def test_deleting_or_merging_forgets_the_person(forgetting):
    identify = Identify("p", {"v": 1})
    sent(identify)
    assert dedup.drop_seen([forgetting, identify]) == [forgetting, identify]  # same batch
    sent(forgetting)
    assert dedup.drop_seen([identify]) == [identify]  # later batches


def test_an_identify_answered_while_the_person_is_deleted_is_not_remembered():
    identify = in_flight(Identify("p", {"plan": "pro"}))
    sent(Delete("p"))  # another worker; Customer.io applied the identify first
    dedup.remember(identify)
    recreate = Identify("p", {"plan": "pro"})
    assert dedup.drop_seen([recreate]) == [recreate]


def test_an_identify_in_flight_during_a_delete_does_not_hide_a_recreate(cio_fake, monkeypatch):
    answered, deleted = threading.Event(), threading.Event()
    remember = dedup.remember

    def slow_remember(ops):
        ops = list(ops)
        if threading.current_thread() is slow:  # its 2xx came; recorded only now
            answered.set()
            deleted.wait(10)
        remember(ops)

    monkeypatch.setattr(dedup, "remember", slow_remember)
    slow = threading.Thread(target=deliver, args=(Identify("p", {"plan": "pro"}),))
    slow.start()
    assert answered.wait(10)
    deliver(Delete("p"))
    deleted.set()
    slow.join()
    deliver(Identify("p", {"plan": "pro"}))  # the person signs up again
    assert cio_fake.store.people["p"] == {"plan": "pro"}


def test_a_person_is_forgotten_before_their_delete_is_sent(cio_fake, published):
    identify = Identify("u1", {"plan": "pro"})
    sent(identify)
    cio_fake.fail_next(503)  # the delete itself fails and will be retried...
    deliver(Delete("u1"))
    assert dedup.drop_seen([identify]) == [identify]  # ...but u1 is no longer "there"


def test_an_identify_sent_while_a_delete_is_in_flight_is_not_remembered():
    delete = in_flight(Delete("p"))
    sent(Identify("p", {"plan": "pro"}))
    sent(*delete)
    recreate = Identify("p", {"plan": "pro"})
    assert dedup.drop_seen([recreate]) == [recreate]


# the cache


def test_ttl_zero_turns_dedup_off(settings):
    identify = Identify("p", {"v": 1})
    sent(identify)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "DEDUP_TTL": 0}
    assert dedup.drop_seen([identify]) == [identify]


def test_a_cache_outage_means_sending(settings, private_redis, caplog):
    settings.CACHES = {**settings.CACHES, "dead": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": private_redis.url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }}
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "CACHE": "dead"}
    identify = Identify("p", {"v": 1})
    sent(identify)
    private_redis.kill()
    assert dedup.drop_seen([identify]) == [identify]
    assert "dedup cache unavailable (ConnectionError)" in caplog.text
    dedup.forget([identify])
    dedup.remember([identify])  # nothing raises


def test_django_s_own_redis_cache_serves_dedup(settings):
    settings.CACHES = {**settings.CACHES, "django": {
        **settings.CACHES["default"], "BACKEND": "django.core.cache.backends.redis.RedisCache"}}
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "CACHE": "django"}
    sent(Identify("p", {"v": 1}))
    assert dedup.drop_seen([Identify("p", {"v": 1})]) == []
    assert shape(dedup.drop_seen([Identify("p", {"v": 2})])) == [("identify", "p", {"v": 2})]


def test_a_cache_that_is_not_redis_turns_dedup_off(settings, caplog, monkeypatch):
    monkeypatch.setattr(dedup, "_warned_no_redis", False)
    settings.CACHES = {**settings.CACHES, "local": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "CACHE": "local"}
    identify = Identify("p", {"v": 1})
    sent(identify)
    assert dedup.drop_seen([identify]) == [identify]
    assert "identify dedup needs a Redis cache" in caplog.text


def test_keys_and_values_hold_no_person_data():
    sent(Identify("ada@example.com", {"email": "ada@example.com", "plan": "pro"}))
    keys = caches["default"].keys("django_cio:identify:*")
    assert keys and not any("ada" in key for key in keys)
    client = get_redis_connection("default")
    stored = client.hgetall(caches["default"].make_key(keys[0]))
    text = repr(stored)
    assert len(stored) == 2 and not any(word in text for word in ("ada", "email", "pro"))


def test_counters_count_hits_and_misses():
    before = dedup.counters()
    identify = Identify("p", {"v": 1})
    sent(identify)
    dedup.drop_seen([identify])
    after = dedup.counters()
    assert after["hits"] - before.get("hits", 0) == 1
    assert after["misses"] - before.get("misses", 0) == 1


def test_a_repeated_identify_costs_no_request(cio_fake):
    deliver(Identify("u1", {"plan": "pro"}))
    deliver(Identify("u1", {"plan": "pro"}))
    deliver(Identify("u1", {"plan": "pro"}), Event("u1", "x", {}))
    assert [request["status"] for request in cio_fake.store.requests] == [200, 200]
    assert cio_fake.store.stats()["ops_per_request"] == {"1": 2}  # the identify, the event


@pytest.mark.parametrize("failure", ["503", "207"])
def test_an_identify_customerio_did_not_take_is_not_remembered(cio_fake, published, failure):
    identify = Identify("u1", {"plan": "pro"})
    if failure == "503":
        cio_fake.fail_next(503)
    else:
        cio_fake.configure(refuse=["u1"])
    deliver(identify)
    assert dedup.drop_seen([identify]) == [identify]


def test_dedup_memory_is_per_workspace(settings):
    identify = Identify("u1", {"plan": "pro"})
    sent(identify)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": "another-workspace"}
    assert dedup.drop_seen([identify]) == [identify]


def test_an_identify_carrying_an_anonymous_id_is_always_sent_and_then_remembered():
    sent(Identify("p", {"plan": "pro"}))
    login = Identify("p", {"plan": "pro", "anonymous_id": "visitor-1"})
    kept = dedup.drop_seen([login])  # it merges anonymous activity: always sent
    assert shape(kept) == [("identify", "p", {"anonymous_id": "visitor-1"})]
    dedup.forget(kept)
    dedup.remember(kept)
    login = Identify("p", {"plan": "pro", "email": "p@example.com", "anonymous_id": "visitor-1"})
    sent(login)
    assert dedup.drop_seen([Identify("p", {"plan": "pro", "email": "p@example.com"})]) == []


# people named by email or cio_id: memory knows people by id only


def test_an_identify_by_email_makes_memory_forget_everyone():
    sent(Identify("p", {"v": 1}))
    sent(Identify(Person(email="p@example.com"), {"v": 2}))  # p's own email, maybe
    again = Identify("p", {"v": 1})
    assert dedup.drop_seen([again]) == [again]


@pytest.mark.parametrize("forgetting", [Delete(Person(cio_id="c1")), Merge("q", Person(
    email="p@example.com"))], ids=["delete", "merge"])
def test_a_delete_or_merge_by_another_identifier_makes_memory_forget(forgetting):
    sent(Identify("p", {"v": 1}))
    sent(forgetting)
    again = Identify("p", {"v": 1})
    assert dedup.drop_seen([again]) == [again]


def test_identifies_by_email_are_always_sent_and_so_is_their_delivery():
    by_email = Identify(Person(email="p@example.com"), {"v": 1})
    sent(by_email)
    assert dedup.drop_seen([by_email]) == [by_email]
    sent(Identify("p", {"v": 1}))
    mixed = [Identify(Person(email="p@example.com"), {"v": 2}), Identify("p", {"v": 1})]
    assert dedup.drop_seen(mixed) == mixed  # the first may change p: nothing is "there"


def test_an_identify_in_flight_when_memory_forgets_is_not_remembered():
    identify = in_flight(Identify("p", {"v": 1}))
    sent(Identify(Person(email="p@example.com"), {"v": 2}))
    dedup.remember(identify)
    again = Identify("p", {"v": 1})
    assert dedup.drop_seen([again]) == [again]


def test_a_claim_made_as_memory_forgets_is_made_again(monkeypatch):
    sent(Identify("p", {"v": 1}))
    read = dedup._epoch
    moved = []

    def read_then_forget(workspace):
        epoch = read(workspace)
        if not moved:  # another worker's identify by email lands between read and claim
            moved.append(dedup.move_epochs([Identify(Person(email="p@example.com"), {})]))
        return epoch

    monkeypatch.setattr(dedup, "_epoch", read_then_forget)
    again = Identify("p", {"v": 1})
    assert dedup.drop_seen([again]) == [again] and moved


def test_an_identify_remembered_while_a_delete_by_email_is_in_flight_is_not_trusted(
        cio_fake, monkeypatch):
    """Found by an attack: memory forgot everyone before the delete by email left, but an
    identify claimed and remembered while it was in flight outlived it. The epoch moves again
    once such a request is answered."""
    from django_cio.backends.http import TrackAPIBackend
    from tests.integration.test_tasks import deliver

    deliver(Identify("p", {"email": "p@example.com", "plan": "pro"}))
    leaving, remembered = threading.Event(), threading.Event()
    send_batch = TrackAPIBackend.send_batch

    def slow_send_batch(self, ops):
        if threading.current_thread() is slow:
            leaving.set()
            remembered.wait(10)
        return send_batch(self, ops)

    monkeypatch.setattr(TrackAPIBackend, "send_batch", slow_send_batch)
    slow = threading.Thread(target=deliver, args=(Delete(Person(email="p@example.com")),))
    slow.start()
    assert leaving.wait(10)
    deliver(Identify("p", {"plan": "pro"}))  # another worker: sent and remembered meanwhile
    remembered.set()
    slow.join()
    assert "p" not in cio_fake.store.people  # the delete by email landed after it
    deliver(Identify("p", {"plan": "pro"}))  # the person signs up again
    assert cio_fake.store.people.get("p") == {"plan": "pro"}


def test_an_op_by_email_waits_while_memory_cannot_forget(cio_fake, monkeypatch, published):
    """Found by an attack: a cache error moving the epoch let the identify by email go while
    memory still held the old value. Now it waits (no retry counted) until memory forgets."""
    from tests.integration.test_tasks import deliver

    deliver(Identify("p", {"email": "p@example.com", "plan": "pro"}, timestamp=100))
    client = dedup._client()
    real_pipeline = client.pipeline
    calls = []

    def flaky_pipeline(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("blip")
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", flaky_pipeline)
    by_email = Identify(Person(email="p@example.com"), {"plan": "free"}, timestamp=101)
    deliver(by_email)
    assert cio_fake.store.people["p"]["plan"] == "pro" and len(published) == 1  # held back
    assert not (published.details[0]["kwargs"] or {}).get("failures")  # no retry counted
    deliver(by_email)  # its retry
    assert cio_fake.store.people["p"]["plan"] == "free"  # p's own email
    again = Identify("p", {"plan": "pro"}, timestamp=102)
    assert dedup.drop_seen([again]) == [again]
