"""TrackClient against the bundled fake server over real sockets, and parity with the SDK."""

import json
import os
import time

import pytest
import requests
from customerio import CustomerIO

from django_cio.client import OpError, TrackClient
from django_cio.exceptions import PermanentError, RateLimited, TransientError
from django_cio.operations import (
    AddDevice,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    Event,
    Identify,
    Merge,
    Page,
    Person,
    Suppress,
    Unsuppress,
)

pytestmark = pytest.mark.integration

PERSON = "ada+shop/1 lovelace"


def test_every_op_kind_arrives(fake, track_client):
    track_client.identify(PERSON, email="ada@example.com", plan="pro")
    track_client.track(PERSON, "purchased", price=23.45)
    track_client.page(PERSON, "https://shop.example/cart?x=1")
    track_client.track_anonymous("anon 7", "viewed_pricing")
    track_client.add_device(PERSON, "device/tok+1", "android", app_version="2.0")
    track_client.delete_device(PERSON, "device/tok+1")
    track_client.add_device(PERSON, "kept", "ios")
    track_client.identify("other", name="Bob", plan="free")
    track_client.merge(PERSON, "other")
    track_client.suppress("gone")
    track_client.unsuppress("gone")
    track_client.identify("leaving", a=1)
    track_client.delete("leaving")

    store = fake.store
    assert store.people == {PERSON: {"email": "ada@example.com", "plan": "pro", "name": "Bob"}}
    assert [(e["person"], e["anonymous_id"], e["type"], e["name"]) for e in store.events] == [
        (PERSON, None, "event", "purchased"),
        (PERSON, None, "page", "https://shop.example/cart?x=1"),
        (None, "anon 7", "event", "viewed_pricing"),
    ]
    assert store.events[0]["data"] == {"price": 23.45}
    assert list(store.devices[PERSON]) == ["kept"]
    assert store.merges == [(PERSON, "other")]
    assert store.suppressed == set()
    assert store.stats()["statuses"] == {"200": 13}


def test_batch_arrives_in_one_request(fake, track_client):
    ops = [Identify(str(i), {"n": i}) for i in range(50)] + [Event("7", "x"), Page("7", "/p")]
    assert track_client.send_batch(ops) == []
    stats = fake.store.stats()
    assert stats["requests"] == 1 and stats["ops_per_request"] == {"52": 1}
    assert len(fake.store.people) == 50 and len(fake.store.events) == 2


def test_batch_partial_failure_is_mapped_to_the_ops(fake, track_client):
    # The client validates, so build what a buggy or stale producer could send by hand.
    good, bad = Identify("1", {}), Event("2", "x")
    object.__setattr__(bad, "name", "n" * 200)
    assert track_client.send_batch([good, bad]) == [OpError(1, bad, "invalid", "name")]
    assert "1" in fake.store.people and fake.store.events == []


def test_repeated_event_ids_are_counted_once(fake, track_client):
    event = Event("1", "paid")
    track_client.send(event)
    track_client.send_batch([event])
    assert len(fake.store.events) == 1 and fake.store.stats()["duplicate_event_ids"] == 1


def test_wrong_credentials_get_401(fake):
    with pytest.raises(PermanentError) as error:
        TrackClient(fake.site_id, "wrong", url=fake.url).identify("1")
    assert error.value.status == 401


def test_rate_cap_answers_429_with_retry_after(fake, track_client):
    fake.configure(rate_limit=5)
    errors = []
    for _ in range(50):
        try:
            track_client.delete("1")
        except RateLimited as error:
            errors.append(error)
    assert 5 <= 50 - len(errors) < 50
    assert {error.retry_after for error in errors} == {1}


def test_injected_failures_and_latency(fake, track_client):
    fake.fail_next(503, 429)
    with pytest.raises(TransientError) as error:
        track_client.delete("1")
    assert error.value.status == 503
    with pytest.raises(RateLimited):
        track_client.delete("1")
    fake.configure(latency_ms=100)
    started = time.perf_counter()
    track_client.delete("1")
    assert time.perf_counter() - started >= 0.1
    fake.configure(latency_ms=0, error_rate=1.0)
    with pytest.raises(TransientError):
        track_client.delete("1")


def test_timeouts_and_dead_servers_are_transient(fake):
    fake.configure(latency_ms=500)
    with pytest.raises(TransientError, match="timeout"):
        TrackClient(fake.site_id, fake.api_key, url=fake.url, timeout=0.1).delete("1")
    dead = TrackClient("s", "k", url="http://127.0.0.1:9", timeout=1)
    with pytest.raises(TransientError, match="network error"):
        dead.delete("1")


def test_body_over_the_cap_gets_413(fake):
    response = requests.post(f"{fake.url}/api/v2/entity", data=b"x" * 40_000,
                             auth=(fake.site_id, fake.api_key), timeout=5)
    assert response.status_code == 413


def test_control_endpoints_over_http(fake, track_client):
    track_client.identify("1", a=1)
    assert requests.get(f"{fake.url}/_fake/people", timeout=5).json() == {"1": {"a": 1}}
    config = requests.post(f"{fake.url}/_fake/config", json={"latency_ms": 5}, timeout=5).json()
    assert config["latency_ms"] == 5
    assert requests.get(f"{fake.url}/_fake/stats", timeout=5).json()["requests"] == 1
    refused = requests.post(f"{fake.url}/_fake/config", json={"bogus": 1}, timeout=5)
    assert refused.status_code == 400
    assert "known: latency_ms, rate_limit, error_rate" in refused.text  # the valid keys
    requests.post(f"{fake.url}/_fake/reset", timeout=5)
    assert fake.store.people == {}


def test_session_is_not_shared_across_fork(fake, track_client):
    track_client.identify("parent-before")
    parent_session = track_client._session()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own connection, and succeed
        try:
            track_client.identify("child")
            ok = track_client._session() is not parent_session
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    track_client.identify("parent-after")
    assert track_client._session() is parent_session
    assert set(fake.store.people) == {"parent-before", "child", "parent-after"}


def test_threads_get_their_own_session(track_client):
    import threading

    sessions = []
    thread = threading.Thread(target=lambda: sessions.append(track_client._session()))
    thread.start()
    thread.join()
    assert sessions[0] is not track_client._session()


# -- parity with the official SDK (customerio 3.2.0) ---------------------------------------


def sdk_for(fake):
    sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
    sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
    return sdk


def last_request(fake):
    request = fake.store.requests[-1]
    return request["method"], request["path"], request["body"]


EVENT_ID = "01HZY3J0X8Q9K2M4N6P8R0S2T4"


@pytest.mark.parametrize(
    ("sdk_call", "our_op"),
    [
        (lambda sdk: sdk.identify(PERSON, email="a@b.c", created_at=1700000000),
         Identify(PERSON, {"email": "a@b.c", "created_at": 1700000000}, timestamp=None)),
        (lambda sdk: sdk.track(PERSON, "paid", data={"n": 1}, id=EVENT_ID, timestamp=1700000000),
         Event(PERSON, "paid", {"n": 1}, id=EVENT_ID, timestamp=1700000000)),
        (lambda sdk: sdk.track_anonymous("anon", "seen", data={"n": 1}, id=EVENT_ID,
                                         timestamp=1700000000),
         AnonymousEvent("anon", "seen", {"n": 1}, id=EVENT_ID, timestamp=1700000000)),
        (lambda sdk: sdk.delete(PERSON), Delete(PERSON)),
        (lambda sdk: sdk.suppress(PERSON), Suppress(PERSON)),
        (lambda sdk: sdk.unsuppress(PERSON), Unsuppress(PERSON)),
        (lambda sdk: sdk.add_device(PERSON, "tok/1", "ios", last_used=1700000000,
                                    attributes={"app_version": "1"}),
         AddDevice(PERSON, "tok/1", "ios", last_used=1700000000,
                   attributes={"app_version": "1"})),
        (lambda sdk: sdk.delete_device(PERSON, "tok/1"), DeleteDevice(PERSON, "tok/1")),
        (lambda sdk: sdk.merge_customers("id", PERSON, "id", "other"), Merge(PERSON, "other")),
    ],
    ids=["identify", "track", "track_anonymous", "delete", "suppress", "unsuppress",
         "add_device", "delete_device", "merge"],
)
def test_same_request_as_the_sdk(fake, track_client, sdk_call, our_op):
    sdk_call(sdk_for(fake))
    theirs = last_request(fake)
    track_client.send(our_op)
    assert last_request(fake) == theirs


def test_page_matches_the_sdk_plus_id_and_timestamp(fake, track_client):
    """The SDK's pageview sends no id or timestamp; ours adds both (dedup and event time)."""
    sdk_for(fake).pageview(PERSON, "https://shop.example/", ref="home")
    method, path, body = last_request(fake)
    page = Page(PERSON, "https://shop.example/", {"ref": "home"})
    track_client.send(page)
    assert last_request(fake) == (method, path, {**body, "id": page.id,
                                                 "timestamp": page.timestamp})
    assert json.dumps(body)  # and the fake server took both
    assert fake.store.stats()["statuses"] == {"200": 2}


@pytest.mark.parametrize("batch", [True, False], ids=["v2", "v1"])
def test_a_late_identify_cannot_overwrite_newer_attributes(fake, track_client, batch):
    # A retry, a parked message or a replay may arrive after a newer change: the time the app
    # made each change orders them (v2 timestamp, v1 _timestamp), as Customer.io does.
    newer = Identify(PERSON, {"plan": "pro", "email": "new@example.com"}, timestamp=1_700_000_100)
    older = Identify(PERSON, {"plan": "free", "name": "Ada"}, timestamp=1_700_000_000)
    for op in (newer, older):
        track_client.send_batch([op]) if batch else track_client.send(op)
    assert fake.store.people[PERSON] == {"plan": "pro", "email": "new@example.com",
                                         "name": "Ada"}


@pytest.mark.parametrize("batch", [True, False], ids=["v2", "v1"])
def test_every_identifier_means_the_same_with_batch_on_or_off(fake, track_client, batch):
    def send(op):
        assert track_client.send_batch([op]) == [] if batch else track_client.send(op) is None

    send(Identify("ada@example.com", {"plan": "pro"}))  # an id that looks like an email
    send(Identify(Person(email="grace@example.com"), {"plan": "free"}))
    grace = fake.store.emails["grace@example.com"]
    send(Event(Person(cio_id=fake.store.cio_id(grace)), "upgraded"))
    send(Merge(Person(email="grace@example.com"), "ada@example.com"))
    assert fake.store.people == {grace: {"email": "grace@example.com", "plan": "free"}}
    assert [event["person"] for event in fake.store.events] == [grace]
    assert fake.store.merges == [(grace, "ada@example.com")]
    assert fake.store.stats()["statuses"] == {"200": 4}


def test_the_sdk_sends_an_email_shaped_id_as_an_email(fake, track_client):
    """Why an email-shaped id never goes as v1: Customer.io (and the fake) read it as an email
    in workspaces that identify people by email, as the official SDK shows."""
    sdk_for(fake).identify("ada@example.com", plan="pro")
    track_client.identify("ada@example.com", plan="pro")
    assert set(fake.store.people) == {"email:ada@example.com", "ada@example.com"}


@pytest.mark.parametrize("attributes", [
    {"email": None}, {"created_at": None}, {"created_at": 1_700_000_000.5}, {"id": 7},
    {"_timestamp": 5}, {"unsubscribed": "yes"},
], ids=["email None", "created_at None", "created_at float", "id int", "_timestamp",
        "unsubscribed string"])
def test_attributes_v1_reads_as_its_own_fields_mean_the_same_alone_or_batched(
        fake, track_client, attributes):
    """Found by an attack: v1's identify body types these names (and takes _timestamp as the
    update's time), v2 keeps them as attributes. Such an identify goes alone as v2."""
    op = Identify("42", {"plan": "pro", **attributes}, timestamp=100)
    assert op.single().path == "/api/v2/entity"
    assert track_client.send_batch([op]) == []
    batched = dict(fake.store.people)
    fake.store.reset()
    track_client.send(op)
    assert fake.store.people == batched == {"42": {"plan": "pro", **attributes}}
