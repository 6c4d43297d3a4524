"""Transactional messages through real worker processes, with faults: nothing lost, nothing
sent twice. The fake App API keeps every message it took, so a duplicate shows as two."""

import os
import signal
import time

import pytest
from django.core import mail

import django_cio
from django_cio.models import DeadLetter, Outbox, SentMessage
from tests.reliability.test_faults import (  # noqa: F401 - on_broker is a fixture
    on_broker,
    pool_processes,
    stop,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def email_backend(settings):
    settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"


def send_codes(count: int) -> None:
    """``count`` SMS, message ``n`` carrying code ``n``."""
    for n in range(count):
        django_cio.send_sms(f"p{n}", "login_code", message_data={"code": n},
                            to=f"+336000000{n:02d}")


def codes(fake) -> list[int]:
    return sorted(message["body"]["message_data"]["code"] for message in fake.store.messages)


def test_an_outage_then_a_429_storm_loses_nothing_and_sends_nothing_twice(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    env = on_broker("redis")
    env["CIO_TEST_CUSTOMERIO"] = '{"RETRY_BACKOFF_MAX": 2}'  # retries in seconds, not minutes
    cio_fake.fail_next(*[503] * 6, *[429] * 6)  # unavailable, then told to slow down
    send_codes(20)
    for _ in range(2):
        worker_process(env=env)
    wait_for(lambda: len(cio_fake.store.messages) >= 20, timeout=120)
    time.sleep(1)  # a duplicate, if any, would arrive now
    assert codes(cio_fake) == list(range(20))
    assert not DeadLetter.objects.exists()
    assert SentMessage.objects.filter(state=SentMessage.SENT).count() == 20


# The claims do not depend on the broker: each victim on the broker that returns its
# messages soonest (RabbitMQ at once; Redis after the visibility timeout, a pool process's
# at once, by its main process).
@pytest.mark.parametrize(("broker_name", "victim"), [("rabbitmq", "whole worker"),
                                                     ("redis", "pool process")])
def test_a_worker_killed_mid_request_never_sends_a_message_twice(
        broker_name, victim, on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    env = on_broker(broker_name)
    cio_fake.configure(latency_ms=1500)  # the fake takes each message, then answers
    send_codes(5)
    worker = worker_process(broker=broker_name, env=env)
    wait_for(lambda: cio_fake.received >= 1, timeout=60)
    if victim == "pool process":  # its main process starts another and requeues the message
        os.kill(pool_processes(worker)[0], signal.SIGKILL)
        cio_fake.configure(latency_ms=0)
    else:  # SIGKILL: its messages come back from the broker
        stop(worker)
        cio_fake.configure(latency_ms=0)
        worker_process(broker=broker_name, env=env)
    # Each message is either sent once or, those whose requests were in flight, held for
    # review: their claims say they may have gone.
    def held() -> set[int]:
        return {letter.op["message_data"]["code"] for letter in DeadLetter.objects.all()}

    # None lost. At least one request was in flight: it is held once its message comes back
    # (a message in flight may be both: taken by the fake, and held).
    wait_for(lambda: held() and set(codes(cio_fake)) | held() == set(range(5)), timeout=120)
    time.sleep(1)
    sent = codes(cio_fake)
    assert len(sent) == len(set(sent))  # never twice
    assert {letter.reason for letter in DeadLetter.objects.all()} == {"may have been sent"}


def test_broker_down_at_send_time_the_outbox_keeps_the_email(
        private_redis, on_broker, cio_fake, worker_process, wait_for,  # noqa: F811
        email_backend):
    env = on_broker("redis")
    private_redis.kill()
    started = time.monotonic()
    assert mail.send_mail("Welcome", "Hi Ada", "shop@example.com", ["ada@example.com"]) == 1
    assert time.monotonic() - started < 10  # a liveness bound: a hang would be minutes
    assert Outbox.objects.exists()
    private_redis.start()
    worker_process(env=env)  # relays the Outbox by itself
    wait_for(lambda: len(cio_fake.store.messages) == 1, timeout=90)
    assert cio_fake.store.messages[0]["body"]["identifiers"] == {"email": "ada@example.com"}
    assert not Outbox.objects.exists()
