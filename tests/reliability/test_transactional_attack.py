"""Attacks on the send-once guarantee of transactional messages, on real parts: real Celery
worker processes (SIGKILLed, under time limits, racing), real brokers, the fake App API over
real sockets and the real test database.

The guarantee: each queued message is sent to the App API at most once, and never silently
lost: sent exactly once, or (when an attempt's outcome is ambiguous) a dead letter whose
reason starts "may have been sent", which a human reviews and may replay.

Two sections:

* Breaks found by the attack, each fixed since: the test failed before its fix, and its
  docstring says what went wrong then.
* Faults the guarantee survived from the start, that no other test covers.
"""

import os
import signal
import time
import uuid

import pytest
from django.core import mail
from django.core.cache import caches
from django.db import transaction
from django.utils.translation import gettext_lazy

import django_cio
from django_cio import Person
from django_cio.conf import get_settings
from django_cio.delivery import dead_letters
from django_cio.models import DeadLetter, SentMessage
from django_cio.operations import SendEmail
from tests.celery_app import app
from tests.integration.test_tasks import deliver
from tests.reliability.test_faults import on_broker, pool_processes  # noqa: F401 - a fixture

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "reset-token-8f2k"


def reset_mail(n: int = 0) -> SendEmail:
    return SendEmail(Person(email=f"ada{n}@example.com"), "password_reset",
                     {"token": SECRET, "n": n}, {"to": f"ada{n}@example.com"})


def publish(ops, failures: int = 0, **options) -> None:
    """One ``deliver`` message, as django-cio publishes it, with Celery options of the caller's
    (a soft time limit, a task id)."""
    app.send_task("django_cio.tasks.deliver", ([op.to_dict() for op in ops],),
                  kwargs={"failures": failures} if failures else {},
                  queue=get_settings().queue, argsrepr=f"[<{len(ops)} ops>]", **options)


def numbers(fake) -> list[int]:
    return sorted(message["body"]["message_data"]["n"] for message in fake.store.messages)


# ==========================================================================================
# Breaks found by the attack (each failed before its fix)
# ==========================================================================================


def test_a_soft_time_limit_mid_request_on_the_last_retry_records_the_send(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """A message on its last allowed attempt (failures == MAX_RETRIES) runs under a Celery
    soft time limit (1 s) while the App API is slow (3 s): SoftTimeLimitExceeded is raised
    after the request left (the fake takes the message). Before the fix, the crashed delivery,
    out of retries, stored it as "crashed (SoftTimeLimitExceeded)" although its claim said
    ``sending``; a reviewer replaying crashed letters would send the email twice. Now the
    delivery waits for the answer before it fails, records the message sent, and stores no
    dead letter (any dead letter of a message reads its claim: test_transactional.py)."""
    env = on_broker("redis")
    cio_fake.configure(latency_ms=3000)
    message = reset_mail()
    publish([message], failures=8, soft_time_limit=1)
    worker_process(env=env)
    wait_for(lambda: SentMessage.objects.filter(id=message.id, state=SentMessage.SENT)
             .exists(), timeout=40)
    time.sleep(2)  # a dead letter or a resend, if any, would come now
    assert len(cio_fake.store.messages) == 1
    assert not DeadLetter.objects.exists()


def test_the_poison_limit_holds_an_in_flight_message_as_may_have_been_sent(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """A message whose worker died four times already (its redelivery counter at 4) is
    SIGKILLed a fifth time while its request is in flight (the fake takes it). Before the fix,
    the redelivery's poison check dead-lettered it as "worker lost too often", without
    looking at the claim, so a replay sent it again. Now: "may have been sent"."""
    env = on_broker("rabbitmq")  # RabbitMQ marks a requeued message redelivered
    cio_fake.configure(latency_ms=3000)
    message, task_id = reset_mail(), str(uuid.uuid4())
    caches["default"].set(f"django_cio:deliveries:{task_id}", 4, 3600)
    publish([message], task_id=task_id)
    worker = worker_process(broker="rabbitmq", env=env)
    wait_for(lambda: cio_fake.received >= 1, timeout=60)  # its request is in flight
    os.kill(pool_processes(worker)[0], signal.SIGKILL)
    wait_for(DeadLetter.objects.exists, timeout=40)
    wait_for(lambda: len(cio_fake.store.messages) == 1, timeout=10)  # it went out
    assert SentMessage.objects.get(id=message.id).state == SentMessage.SENDING
    letter = DeadLetter.objects.get()
    assert letter.reason.startswith("may have been sent"), letter.reason


def test_a_replay_while_the_first_attempt_is_in_flight_does_not_send_it_twice(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """A message is in flight in a worker (the App API slow: 3 s) when a second copy of it is
    delivered (a relay publishing a row again): the copy finds the claim and becomes a dead
    letter "may have been sent". The reviewer replays it at once. Before the fix, the replay
    deleted the claim of the attempt in flight, whose success then recorded nothing, and the
    replayed copy was sent too: two emails. Now a replay keeps a claim young enough to be in
    flight, and a success records itself claim or no claim."""
    env = on_broker("redis")
    cio_fake.configure(latency_ms=3000)
    message = reset_mail()
    publish([message])
    worker_process(env=env)
    wait_for(lambda: cio_fake.received >= 1, timeout=60)  # attempt 1 in flight
    deliver(message)  # the second copy, in this process
    assert DeadLetter.objects.get().reason == "may have been sent"
    assert dead_letters.replay(DeadLetter.objects.all()) == 1
    wait_for(lambda: len(cio_fake.store.messages) >= 1, timeout=20)  # attempt 1 was taken
    wait_for(lambda: SentMessage.objects.filter(id=message.id, state=SentMessage.SENT).exists(),
             timeout=30)
    time.sleep(4)  # the replayed copy, if it is sent, arrives now
    assert len(cio_fake.store.messages) == 1, "the message was sent twice"


def test_send_mail_takes_a_lazy_subject(cio_fake, published, settings):
    """``send_mail(gettext_lazy("..."), ...)`` works with every Django email backend. Before
    the fix, django-cio's passed the lazy object on as the App API's ``subject``, which is
    not a ``str``, and the user's request failed with a ValidationError."""
    settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"
    assert mail.send_mail(gettext_lazy("Reset your password"), "Hi Ada",
                          "shop@example.com", ["ada@example.com"]) == 1
    assert len(published) == 1 and published[0][0]["fields"]["subject"] == "Reset your password"


# ==========================================================================================
# Faults the guarantee survived
# ==========================================================================================


def test_a_soft_time_limit_mid_request_sends_once_and_logs_no_value(
        on_broker, cio_fake, worker_process, wait_for, capfd):  # noqa: F811
    """SoftTimeLimitExceeded inside an App API request (after it left) with retries left:
    the delivery records the answer before it fails, and the retry ``retry_after_crash``
    publishes finds nothing unsent. Sent once, never resent; the worker process's own log
    (Celery's soft-limit and crash lines included) shows no address and no message data."""
    env = on_broker("redis")
    cio_fake.configure(latency_ms=3000)
    message = reset_mail()
    publish([message], soft_time_limit=1)
    worker_process(env=env)
    wait_for(lambda: SentMessage.objects.filter(id=message.id, state=SentMessage.SENT)
             .exists(), timeout=40)
    time.sleep(2)
    assert len(cio_fake.store.messages) == 1 and not DeadLetter.objects.exists()
    logs = "".join(capfd.readouterr())
    assert "SoftTimeLimitExceeded" in logs or "Soft time limit" in logs  # we see its log
    assert SECRET not in logs and "ada0@example.com" not in logs


def test_a_hard_time_limit_hands_drained_messages_on_and_sends_each_once(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """A project-wide hard time limit of 3 s, 12 messages queued (drained together by one
    task), each request 400 ms (TIMEOUT 1 s): the task hands the rest on before the limit
    kills it. Every message sent exactly once, no dead letter."""
    env = on_broker("redis")
    env.update(CIO_TEST_TIME_LIMIT="3", CIO_TEST_CUSTOMERIO='{"TIMEOUT": 1}')
    cio_fake.configure(latency_ms=400)
    for n in range(12):
        django_cio.send_email(Person(email=f"ada{n}@example.com"), "welcome",
                              message_data={"n": n}, to=f"ada{n}@example.com")
    worker_process(env=env)
    wait_for(lambda: len(cio_fake.store.messages) >= 12, timeout=60)
    time.sleep(1)
    assert numbers(cio_fake) == list(range(12))
    assert not DeadLetter.objects.exists()


def test_track_ops_failing_in_the_same_transaction_do_not_resend_the_message(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """One transaction makes an identify and an email; the Track request is answered 503
    twice. The Track ops are retried; the email (its own App API delivery in the same task)
    is sent once, and the retries that carry the Track ops never carry it again."""
    env = on_broker("redis")
    env["CIO_TEST_CUSTOMERIO"] = '{"RETRY_BACKOFF_MAX": 1}'
    cio_fake.fail_next(503, 503)
    with transaction.atomic():
        django_cio.identify(Person(email="ada@example.com"), first_name="Ada")
        django_cio.send_email(Person(email="ada@example.com"), "welcome",
                              message_data={"n": 0}, to="ada@example.com")
    worker_process(env=env)
    wait_for(lambda: cio_fake.store.stats()["ops"].get("identify", 0) >= 1, timeout=60)
    wait_for(lambda: len(cio_fake.store.messages) >= 1, timeout=30)
    time.sleep(1)
    assert numbers(cio_fake) == [0]
    assert not DeadLetter.objects.exists()


def test_two_workers_racing_on_duplicate_copies_never_send_twice(
        on_broker, cio_fake, worker_process, wait_for):  # noqa: F811
    """Each of 10 messages is on the queue twice (a relay publishing a row again, a publish
    parked after its confirm timed out), and two worker processes take them at once, with
    draining, while the App API answers in 300 ms. No message is sent twice; a copy that
    finds the other's claim in flight is a dead letter "may have been sent"; every message
    is sent or held."""
    env = on_broker("redis")
    cio_fake.configure(latency_ms=300)
    messages = [reset_mail(n) for n in range(10)]
    for message in messages:
        publish([message])
    for message in messages:
        publish([message])
    for _ in range(2):
        worker_process(env=env)
    wait_for(lambda: SentMessage.objects.filter(state=SentMessage.SENT).count() == 10,
             timeout=60)
    time.sleep(2)
    sent = numbers(cio_fake)
    assert sent == list(range(10))  # each once
    assert {letter.reason for letter in DeadLetter.objects.all()} <= {"may have been sent"}
