"""AppClient (transactional messages) against the bundled fake's App API over real sockets:
what it sends, and for each failure whether the message may have gone out all the same."""

import pytest
import requests

from django_cio import Person
from django_cio.client import AppClient
from django_cio.exceptions import PermanentError, RateLimited, TransientError
from django_cio.operations import SendEmail, SendPush, SendSms
from tests.conftest import free_port

pytestmark = pytest.mark.integration

WELCOME = SendEmail(Person(email="ada@example.com"), "welcome", {"name": "Ada"},
                    {"to": "Ada <ada@example.com>", "subject": "Hello"})


@pytest.fixture
def app(fake):
    client = AppClient(fake.app_api_key, url=fake.url, timeout=2)
    yield client
    client.close()


def test_each_channel_is_sent_with_bearer_auth_and_answered_with_a_delivery_id(fake, app):
    answers = [app.send_message(op) for op in (
        WELCOME, SendPush("42", 7, {"order": 1}, {"to": "last_used", "title": "Shipped"}),
        SendSms("42", "code", {"code": "123456"}, {"to": "+33612345678"}))]
    assert [a["delivery_id"] for a in answers] == ["fake-00000001", "fake-00000002",
                                                   "fake-00000003"]
    assert [m["channel"] for m in fake.store.messages] == ["email", "push", "sms"]
    assert fake.store.messages[0]["body"] == WELCOME.body()


def test_the_track_key_is_not_an_app_api_key(fake):
    with pytest.raises(PermanentError) as refused:
        AppClient(fake.api_key, url=fake.url).send_message(WELCOME)
    assert refused.value.status == 401 and not refused.value.maybe_sent
    assert fake.store.messages == []


@pytest.mark.parametrize(("status", "error", "maybe_sent"), [
    (429, RateLimited, False),   # not taken: safe to send again
    (503, TransientError, False),  # unavailable: not taken
    (400, PermanentError, False),
    (500, TransientError, True),  # it may have been taken before it failed
    (502, TransientError, True),
    (504, TransientError, True),
])
def test_an_answer_says_whether_the_message_may_have_gone(fake, app, status, error,
                                                           maybe_sent):
    fake.fail_next(status)
    with pytest.raises(error) as failed:
        app.send_message(WELCOME)
    assert failed.value.maybe_sent is maybe_sent


def test_no_answer_after_the_request_left_may_have_sent_it(fake, app):
    fake.configure(latency_ms=3000)  # the fake takes it, then answers too late
    with pytest.raises(TransientError, match="timeout") as failed:
        app.send_message(WELCOME)
    assert failed.value.maybe_sent


def test_a_connection_never_made_sent_nothing():
    app = AppClient("key", url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError) as failed:
        app.send_message(WELCOME)
    assert not failed.value.maybe_sent and "network error" in str(failed.value)


def test_the_fake_refuses_what_the_app_api_would(fake, app):
    fake.configure(strict=True)
    for body, status in (({"to": "a@b.c"}, 400), ({"identifiers": {"id": "1"}}, 400)):
        response = requests.post(
            f"{fake.url}/v1/send/sms", json=body,
            headers={"Authorization": f"Bearer {fake.app_api_key}"}, timeout=5)
        assert response.status_code == status and "error" in response.json()["meta"]


