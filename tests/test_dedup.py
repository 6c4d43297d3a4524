"""Identify dedup against the real Redis cache (django-redis)."""

import pytest
from django.core.cache import caches

from django_cio import dedup
from django_cio.operations import Delete, Event, Identify, Merge
from tests.test_tasks import deliver

pytestmark = pytest.mark.django_db(transaction=True)


def shape(ops):
    return [(op.kind, op.person_id, getattr(op, "attributes", None)) for op in ops]


def test_consecutive_identifies_of_a_person_collapse_in_order():
    ops = [Identify("a", {"x": 1}), Identify("b", {"y": 1}), Identify("a", {"x": 2, "z": 3}),
           Event("a", "e", {}), Identify("a", {"x": 4})]
    assert shape(dedup.collapse(ops)) == [
        ("identify", "a", {"x": 2, "z": 3}), ("identify", "b", {"y": 1}),
        ("event", "a", None), ("identify", "a", {"x": 4}),
    ]


def test_identifies_that_together_break_a_limit_are_not_collapsed():
    first = Identify("a", {f"k{n}": n for n in range(200)})
    second = Identify("a", {f"j{n}": n for n in range(200)})
    assert dedup.collapse([first, second]) == [first, second]


def test_a_remembered_identify_is_dropped_and_a_changed_one_sent():
    dedup.remember([Identify("a", {"plan": "pro", "n": 1})])
    same_other_order = Identify("a", {"n": 1, "plan": "pro"})
    changed = Identify("a", {"plan": "free", "n": 1})
    assert dedup.drop_seen([same_other_order]) == []
    assert dedup.drop_seen([changed]) == [changed]


def test_a_b_a_sends_the_third():
    a, b = Identify("p", {"v": "a"}), Identify("p", {"v": "b"})
    dedup.remember([a])
    dedup.remember([b])
    assert dedup.drop_seen([a]) == [a]


@pytest.mark.parametrize("forgetting", [Delete("p"), Merge("q", "p")], ids=["delete", "merge"])
def test_deleting_or_merging_forgets_the_person(forgetting):
    identify = Identify("p", {"v": 1})
    dedup.remember([identify])
    assert dedup.drop_seen([forgetting, identify]) == [forgetting, identify]  # same batch
    dedup.remember([forgetting])
    assert dedup.drop_seen([identify]) == [identify]  # later batches


def test_ttl_zero_turns_dedup_off(settings):
    identify = Identify("p", {"v": 1})
    dedup.remember([identify])
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "DEDUP_TTL": 0}
    assert dedup.drop_seen([identify]) == [identify]


def test_a_cache_outage_means_sending(settings, private_redis, caplog):
    settings.CACHES = {**settings.CACHES, "dead": {
        "BACKEND": "django_redis.cache.RedisCache", "LOCATION": private_redis.url,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }}
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "CACHE": "dead"}
    identify = Identify("p", {"v": 1})
    dedup.remember([identify])
    private_redis.kill()
    assert dedup.drop_seen([identify]) == [identify]
    assert "dedup cache unavailable (ConnectionError)" in caplog.text


def test_keys_hold_no_person_ids():
    dedup.remember([Identify("ada@example.com", {"v": 1})])
    keys = caches["default"].keys("django_cio:identify:*")
    assert keys and not any("ada" in key for key in keys)


def test_counters_count_hits_and_misses():
    before = dedup.counters()
    identify = Identify("p", {"v": 1})
    dedup.drop_seen([identify])
    dedup.remember([identify])
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
    dedup.remember([identify])
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "SITE_ID": "another-workspace"}
    assert dedup.drop_seen([identify]) == [identify]


def test_a_person_is_forgotten_before_their_delete_is_sent(cio_fake, published):
    identify = Identify("u1", {"plan": "pro"})
    dedup.remember([identify])
    cio_fake.fail_next(503)  # the delete itself fails and will be retried...
    deliver(Delete("u1"))
    assert dedup.drop_seen([identify]) == [identify]  # ...but u1 is no longer "there"


def test_an_identify_carrying_an_anonymous_id_is_always_sent_and_then_remembered():
    plain = Identify("p", {"plan": "pro"})
    login = Identify("p", {"plan": "pro", "anonymous_id": "visitor-1"})
    dedup.remember([plain])
    assert dedup.drop_seen([login]) == [login]  # it merges anonymous activity: always sent
    dedup.remember([login])
    assert dedup.drop_seen([plain]) == []  # Customer.io has these attributes
