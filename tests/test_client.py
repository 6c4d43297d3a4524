"""TrackClient answer classification, with HTTP mocked by ``responses``."""

import base64
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests
import responses

from django_cio.client import OpError, TrackClient, parse_retry_after
from django_cio.exceptions import (
    APIError,
    ConfigurationError,
    PermanentError,
    RateLimited,
    TransientError,
    ValidationError,
)
from django_cio.operations import MAX_BATCH_BYTES, AnonymousEvent, Event, Identify

URL = "https://track.customer.io"
KEY = "api-key-must-never-show"
EMAIL = "ada@example.com"
# A v1 path holds a plain id: an email-shaped one goes to /api/v2/entity (test_identifiers.py).
PERSON = "ada lovelace/1+x"
QUOTED = "ada%20lovelace%2F1%2Bx"


@pytest.fixture
def track():
    return TrackClient("site", KEY)


@pytest.fixture
def mocked():
    with responses.RequestsMock() as rsps:
        yield rsps


def test_regions_and_url_override():
    assert TrackClient("s", "k").base_url == "https://track.customer.io"
    assert TrackClient("s", "k", region="eu").base_url == "https://track-eu.customer.io"
    assert TrackClient("s", "k", url="http://127.0.0.1:1/").base_url == "http://127.0.0.1:1"
    with pytest.raises(ConfigurationError):
        TrackClient("s", "k", region="mars")


def test_repr_hides_the_key(track):
    assert KEY not in repr(track)


def test_sends_basic_auth_json_and_quoted_path(mocked, track):
    mocked.put(f"{URL}/api/v1/customers/{QUOTED}")
    track.identify(PERSON, first_name="Ada")
    request = mocked.calls[0].request
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(
        f"site:{KEY}".encode()).decode()
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert isinstance(body.pop("_timestamp"), int)  # the time of the change, for ordering
    assert body == {"first_name": "Ada"}


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (400, PermanentError, "bad request"),
        (401, PermanentError, "unauthorized"),
        (403, PermanentError, "forbidden"),
        (404, PermanentError, "not found"),
        (413, PermanentError, "too large"),
        (422, PermanentError, "refused"),
        (408, TransientError, "timeout"),
        (500, TransientError, "server error"),
        (502, TransientError, "server error"),
        (503, TransientError, "server error"),
    ],
)
def test_statuses_are_classified(mocked, track, status, error, reason):
    mocked.delete(f"{URL}/api/v1/customers/{QUOTED}", status=status,
                  json={"meta": {"error": f"bad {EMAIL} {PERSON}"}})
    with pytest.raises(error) as raised:
        track.delete(PERSON)
    assert not isinstance(raised.value, RateLimited)
    assert raised.value.status == status and raised.value.kind == "delete"
    assert reason in str(raised.value)
    assert_clean(raised.value)


def assert_clean(error: BaseException) -> None:
    """No key, no person id, no body, and no chained exception that could hold them."""
    text = str(error) + repr(error)
    assert KEY not in text and EMAIL not in text and PERSON not in text and QUOTED not in text
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize(
    ("header", "expected"),
    [({"Retry-After": "7"}, 7.0), ({"Retry-After": "0.5"}, 0.5), ({}, None),
     ({"Retry-After": "soon"}, None)],
)
def test_429_is_rate_limited_with_retry_after(mocked, track, header, expected):
    mocked.post(f"{URL}/api/v1/customers/1/events", status=429, headers=header)
    with pytest.raises(RateLimited) as raised:
        track.track("1", "x")
    assert raised.value.retry_after == expected and raised.value.status == 429
    assert isinstance(raised.value, TransientError)


def test_retry_after_as_http_date():
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 28 <= parse_retry_after(format_datetime(later, usegmt=True)) <= 30
    earlier = datetime.now(timezone.utc) - timedelta(seconds=30)
    assert parse_retry_after(format_datetime(earlier, usegmt=True)) == 0


@pytest.mark.parametrize(
    ("raised", "reason"),
    [(requests.ConnectTimeout(f"{URL}/api/v1/customers/{EMAIL}"), "timeout"),
     (requests.ReadTimeout("read timed out"), "timeout"),
     (requests.ConnectionError(f"Max retries exceeded with url: /customers/{EMAIL}"),
      "network error (ConnectionError)")],
)
def test_network_errors_are_transient_and_clean(mocked, track, raised, reason):
    mocked.put(f"{URL}/api/v1/customers/{QUOTED}", body=raised)
    with pytest.raises(TransientError) as error:
        track.identify(PERSON, email=EMAIL)
    assert error.value.status is None and reason in str(error.value)
    assert_clean(error.value)


def test_send_batch_posts_v2_items(mocked, track):
    mocked.post(f"{URL}/api/v2/batch", json={})
    ops = [Identify("1", {"a": 1}), Event("1", "x")]
    assert track.send_batch(ops) == []
    assert json.loads(mocked.calls[0].request.body) == {"batch": [op.v2() for op in ops]}


def test_207_maps_errors_back_to_ops(mocked, track):
    ops = [Identify("1", {}), Event("2", "x"), Identify("3", {}), Event("4", "y")]
    mocked.post(f"{URL}/api/v2/batch", status=207, json={"errors": [
        {"batch_index": 3, "reason": "invalid", "field": "name", "message": f"{EMAIL} bad"},
        {"batch_index": 1, "reason": "too_long", "message": "x"},
    ]})
    assert track.send_batch(ops) == [
        OpError(1, ops[1], "too_long", None),
        OpError(3, ops[3], "invalid", "name"),
    ]


@pytest.mark.parametrize("body", ["not json", json.dumps({"errors": [{"batch_index": 9}]}),
                                  json.dumps({"nope": 1})])
def test_unreadable_207_is_transient(mocked, track, body):
    mocked.post(f"{URL}/api/v2/batch", status=207, body=body)
    with pytest.raises(TransientError, match="unreadable 207") as error:
        track.send_batch([Identify("1", {})])
    assert error.value.count == 1


def test_batch_errors_name_kind_and_count(mocked, track):
    mocked.post(f"{URL}/api/v2/batch", status=503)
    with pytest.raises(APIError) as error:
        track.send_batch([Identify("1", {}), Event("1", "x"), Event("1", "y")])
    assert (error.value.kind, error.value.count) == ("mixed", 3)
    assert "3 mixed ops" in str(error.value)


def test_send_batch_refuses_what_v2_cannot_take(track):
    with pytest.raises(ValidationError, match="no v2 form"):
        track.send_batch([AnonymousEvent("a", "x")])
    big = Identify("1", {f"a{i}": "x" * 999 for i in range(40)})
    with pytest.raises(ValidationError, match=r"batch\[0\] \(identify\) is .* 32000"):
        track.send_batch([big])
    items = [Event(str(i), "x", {"blob": "y" * 30_000}) for i in range(17)]
    with pytest.raises(ValidationError, match=f"the limit is {MAX_BATCH_BYTES}"):
        track.send_batch(items)


def test_empty_batch_sends_nothing(mocked, track):
    assert track.send_batch([]) == []
    assert len(mocked.calls) == 0


def test_redirects_are_not_followed(mocked, track):
    mocked.put(f"{URL}/api/v1/customers/1", status=302, headers={"Location": f"{URL}/elsewhere"})
    with pytest.raises(PermanentError, match="redirected") as error:
        track.identify("1", a=1)
    assert error.value.status == 302
    assert len(mocked.calls) == 1


@pytest.mark.parametrize("index", [-1, 2, "x"])
def test_207_with_an_index_out_of_range_is_transient(mocked, track, index):
    mocked.post(f"{URL}/api/v2/batch", status=207,
                json={"errors": [{"batch_index": index, "reason": "invalid"}]})
    with pytest.raises(TransientError, match="unreadable 207"):
        track.send_batch([Identify("1", {}), Identify("2", {})])


def test_network_error_keeps_no_context(mocked, track):
    mocked.put(f"{URL}/api/v1/customers/{QUOTED}",
               body=requests.ConnectionError(f"/customers/{EMAIL}"))
    with pytest.raises(TransientError) as error:
        track.identify(PERSON)
    assert error.value.__context__ is None


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "10"])
def test_bad_timeouts_are_refused(timeout):
    with pytest.raises(ConfigurationError, match="timeout"):
        TrackClient("s", "k", timeout=timeout)


def test_bad_url_is_refused():
    with pytest.raises(ConfigurationError, match="url"):
        TrackClient("s", "k", url="track.customer.io")


def test_op_error_repr_is_redacted(mocked, track):
    mocked.post(f"{URL}/api/v2/batch", status=207,
                json={"errors": [{"batch_index": 0, "reason": "invalid"}]})
    (error,) = track.send_batch([Identify(EMAIL, {"email": EMAIL})])
    assert EMAIL not in repr(error)


def test_urllib3_debug_lines_hide_person_ids_and_tokens_wherever_the_path_is():
    from django_cio.privacy import hide_person_paths

    assert hide_person_paths("PUT /cio/api/v1/customers/ada%40example.com HTTP/1.1") == (
        "PUT /cio/api/v1/customers/<id> HTTP/1.1")
    assert hide_person_paths("https://proxy/api/v1/customers/42/devices/tok?x=1") == (
        "https://proxy/api/v1/customers/<id>/devices/<token>?x=1")
    assert hide_person_paths("POST /api/v2/batch HTTP/1.1") == "POST /api/v2/batch HTTP/1.1"
