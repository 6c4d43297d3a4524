"""Transactional messages through the delivery task, against the fake App API over real
sockets and a real database: each is sent at most once, retried only when the answer proves
it was not taken, and dead-lettered for review when it may have been.

The task runs in this process (``deliver.apply``); retries are real broker messages,
recorded by ``published``. Real workers are in reliability/test_transactional_faults.py.
"""

import logging
from datetime import timedelta

import pytest
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

import django_cio
from django_cio import Person
from django_cio.delivery import dead_letters, messages
from django_cio.exceptions import ConfigurationError
from django_cio.models import DeadLetter, SentMessage
from django_cio.operations import Identify, Operation, SendEmail, SendSms
from django_cio.signals import post_send
from tests.conftest import free_port
from tests.integration.test_tasks import deliver

# ``published`` for every test: it empties the queue after each, so that no test's retry or
# replay is drained by the next one's delivery.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("published")]

SECRET = "reset-token-8f2k"  # message data no log, reason or admin page may show


def reset_mail() -> SendEmail:
    return SendEmail(Person(email="ada@example.com"), "password_reset", {"token": SECRET},
                     {"to": "ada@example.com"})


def test_a_message_is_sent_once_and_its_delivery_id_kept_and_reported(cio_fake, published):
    results = []

    @receiver(post_send, weak=False)
    def report(sender, results=(), **kwargs):
        reported.extend(results)

    reported = results
    mail = reset_mail()
    try:
        deliver(mail)
    finally:
        post_send.disconnect(report)
    [message] = cio_fake.store.messages
    assert message["body"]["message_data"] == {"token": SECRET}
    assert [(r.status, r.delivery_id) for r in results] == [("sent", message["delivery_id"])]
    assert SentMessage.objects.get(id=mail.id).delivery_id == message["delivery_id"]
    assert published == []


def test_a_message_delivered_again_is_not_sent_again(cio_fake):
    mail = reset_mail()
    deliver(mail)
    deliver(mail)  # the broker gave the message back (a lost acknowledgement)
    assert len(cio_fake.store.messages) == 1
    assert not DeadLetter.objects.exists()


def test_a_message_whose_earlier_attempt_never_finished_is_held_for_review(cio_fake):
    mail = reset_mail()
    SentMessage.objects.create(id=mail.id, kind=mail.kind)  # a worker died mid-request
    deliver(mail)
    assert cio_fake.store.messages == []
    assert DeadLetter.objects.get().reason == "may have been sent"


@pytest.mark.parametrize("status", [429, 503])
def test_an_answer_that_proves_it_unsent_is_retried(cio_fake, published, status):
    cio_fake.fail_next(status)
    mail = reset_mail()
    deliver(mail)
    assert cio_fake.store.messages == [] and not DeadLetter.objects.exists()
    assert published == [[mail.to_dict()]]
    assert not SentMessage.objects.exists()  # released: the retry may send it
    deliver(mail, failures=published.details[0]["kwargs"].get("failures", 0))
    assert len(cio_fake.store.messages) == 1


def test_a_refused_connection_is_retried(cio_fake, published, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "APP_URL": f"http://127.0.0.1:{free_port()}"}
    deliver(reset_mail())
    assert len(published) == 1 and not DeadLetter.objects.exists()
    assert not SentMessage.objects.exists()


@pytest.mark.parametrize("status", [500, 502, 504])
def test_an_answer_that_may_follow_a_send_is_a_dead_letter_not_a_resend(cio_fake, published,
                                                                         status):
    cio_fake.fail_next(status)
    mail = reset_mail()
    deliver(mail)
    assert published == []
    letter = DeadLetter.objects.get()
    assert letter.reason.startswith("may have been sent") and letter.status == status
    assert SentMessage.objects.get(id=mail.id).state == SentMessage.SENDING


def test_a_timeout_after_the_request_left_is_a_dead_letter(cio_fake, published, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "TIMEOUT": 0.5}
    cio_fake.configure(latency_ms=1500)  # taken, answered too late
    deliver(reset_mail())
    assert published == []
    assert DeadLetter.objects.get().reason == "may have been sent (timeout)"


def test_replaying_a_may_have_been_sent_letter_sends_it(cio_fake):
    cio_fake.fail_next(500)  # refused here, in truth: the reviewer decides to send it
    mail = reset_mail()
    deliver(mail)
    [letter] = DeadLetter.objects.all()
    settled = timezone.now() - timedelta(seconds=messages.IN_FLIGHT_AT_MOST + 1)
    SentMessage.objects.filter(id=mail.id).update(created_at=settled)
    assert dead_letters.replay(DeadLetter.objects.all()) == 1
    assert not SentMessage.objects.filter(id=mail.id).exists()
    deliver(Operation.from_dict(letter.op))  # what a worker does with the replayed message
    assert len(cio_fake.store.messages) == 1


def test_a_replay_keeps_the_claim_of_an_attempt_that_may_be_in_flight(cio_fake):
    """A copy of a message arrives while its first attempt waits for an answer (a relay
    publishing twice): the copy is held for review, and replaying it at once must not send
    it beside the first attempt."""
    mail = reset_mail()
    SentMessage.objects.create(id=mail.id, kind=mail.kind)  # the first attempt, in flight
    deliver(mail)
    assert DeadLetter.objects.get().reason == "may have been sent"
    dead_letters.replay(DeadLetter.objects.all())
    deliver(mail)  # the replayed copy
    assert cio_fake.store.messages == []  # held again, not sent beside the first attempt
    messages.sent(mail, "d-1")  # the first attempt is answered after all
    deliver(mail)
    assert cio_fake.store.messages == []


def test_a_message_customerio_refuses_is_a_dead_letter_naming_no_value(cio_fake, caplog):
    bad = SendSms("42", "code", {"token": SECRET}, {"to": "+33612345678"})
    cio_fake.fail_next(400)
    with caplog.at_level(logging.DEBUG, logger="django_cio"):
        deliver(bad)
    letter = DeadLetter.objects.get()
    assert letter.status == 400 and letter.kind == "send_sms"
    assert not SentMessage.objects.exists()  # refused: replay may send it
    for text in (caplog.text, letter.reason):
        assert SECRET not in text and "+33612345678" not in text


def test_a_refused_app_key_holds_messages_without_a_dead_letter(cio_fake, published, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "APP_API_KEY": "rotated"}
    mail = reset_mail()
    deliver(mail)
    assert cio_fake.store.messages == [] and not DeadLetter.objects.exists()
    assert published.details[0]["kwargs"].get("failures", 0) == 0  # held, not counted as a failure
    assert not SentMessage.objects.exists()


def test_the_track_ops_of_a_transaction_go_before_its_message(cio_fake):
    deliver(reset_mail(), Identify(Person(email="ada@example.com"), {"first_name": "Ada"}))
    assert cio_fake.store.requests[0]["path"].startswith("/api/")
    assert cio_fake.store.requests[-1]["path"] == "/v1/send/email"


def test_a_message_queued_in_a_transaction_waits_for_the_commit(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO,
                           "BACKEND": "django_cio.backends.locmem.LocMemBackend"}
    django_cio.outbox.clear()
    with transaction.atomic():
        django_cio.send_sms("42", "code", message_data={"code": "1"}, to="+33612345678")
        assert django_cio.outbox == []
    assert [op.kind for op in django_cio.outbox] == ["send_sms"]


def test_without_an_app_api_key_a_send_fails_at_the_call(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "APP_API_KEY": None}
    with pytest.raises(ConfigurationError, match=r"\['APP_API_KEY'\] is required"):
        django_cio.send_push("42", 7, to="last_used")


def test_a_message_id_customerio_does_not_have_is_a_dead_letter(cio_fake):
    cio_fake.configure(transactional_messages=["welcome"])
    deliver(reset_mail())
    letter = DeadLetter.objects.get()
    assert (letter.status, letter.reason) == (404, "not found")
    assert cio_fake.store.messages == []


def test_the_admin_shows_a_message_by_kind_and_id_never_its_address_or_data(cio_fake,
                                                                            admin_client):
    cio_fake.fail_next(500)
    mail = reset_mail()
    deliver(mail)
    letter = DeadLetter.objects.get()
    pages = [admin_client.get(f"/admin/django_cio/{page}/") for page in (
        "deadletter", f"deadletter/{letter.pk}/change", "sentmessage",
        f"sentmessage/{mail.id}/change")]
    for page in pages:
        assert page.status_code == 200
        text = page.content.decode()
        assert "ada@example.com" not in text and SECRET not in text
    assert mail.id in pages[2].content.decode()


def test_claims_of_messages_sent_long_ago_are_pruned(cio_fake):
    old, new = reset_mail(), reset_mail()
    for mail in (old, new):
        deliver(mail)
    SentMessage.objects.filter(id=old.id).update(
        created_at=timezone.now() - timedelta(seconds=messages.KEEP_SENT_FOR + 60))
    SentMessage.objects.create(id=reset_mail().id, kind="send_email",  # left "sending": kept
                               created_at=timezone.now() - timedelta(days=30))
    assert messages.prune() == 1
    assert set(SentMessage.objects.values_list("id", flat=True)) >= {new.id}
    assert not SentMessage.objects.filter(id=old.id).exists()
    assert SentMessage.objects.count() == 2


def test_cio_replay_sweeps_never_resend_a_message_that_may_have_gone(cio_fake):
    from django.core.management import call_command

    cio_fake.fail_next(500)
    deliver(reset_mail())  # "may have been sent (server error)"
    SentMessage.objects.update(created_at=timezone.now() - timedelta(days=1))
    call_command("cio_replay", "--reason", "server error")
    call_command("cio_replay", "--all")
    assert DeadLetter.objects.count() == 1  # kept: a sweep is not a review
    call_command("cio_replay", "--all", "--may-have-been-sent")
    assert not DeadLetter.objects.exists()


def test_a_delivery_keeps_several_messages_in_flight(cio_fake):
    """One drained backlog of emails is not sent one round trip at a time."""
    import threading

    cio_fake.configure(latency_ms=400)
    most, done = 0, threading.Event()

    def watch():
        nonlocal most
        while not done.is_set():
            most = max(most, cio_fake.received - len(cio_fake.store.messages))
            done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        deliver(*[reset_mail() for _ in range(messages.MAX_IN_FLIGHT)])
    finally:
        done.set()
        watcher.join()
    assert len(cio_fake.store.messages) == messages.MAX_IN_FLIGHT
    assert most > 1


def test_a_429_among_messages_in_flight_loses_none_and_sends_none_twice(cio_fake, published):
    mails = [reset_mail() for _ in range(20)]
    cio_fake.fail_next(0, 0, 429)  # the third request
    deliver(*mails)
    retried = [op["id"] for message in published for op in message]
    sent = [SentMessage.objects.get(id=mail.id) for mail in mails if mail.id not in retried]
    assert retried and all(claim.state == SentMessage.SENT for claim in sent)
    assert len(cio_fake.store.messages) == len(sent) and not DeadLetter.objects.exists()
    assert not SentMessage.objects.filter(id__in=retried).exists()  # free to be sent later


def test_the_admin_replays_a_message_that_may_have_gone_only_by_its_own_action(
        cio_fake, admin_client):
    cio_fake.fail_next(500)
    deliver(reset_mail())
    SentMessage.objects.update(created_at=timezone.now() - timedelta(days=1))
    letter = DeadLetter.objects.get()
    for action, left in (("replay", 1), ("replay_messages_that_may_have_been_sent", 0)):
        admin_client.post("/admin/django_cio/deadletter/", {
            "action": action, "_selected_action": [letter.pk]})
        assert DeadLetter.objects.count() == left


def test_a_request_that_may_have_been_taken_stops_the_rest_of_the_delivery(cio_fake,
                                                                           published):
    """In a brownout, a drained backlog is not sent into the failing API one by one (each
    would be one more message to review): the rest wait for a retry."""
    cio_fake.fail_next(500)
    mails = [reset_mail() for _ in range(3 * messages.MAX_IN_FLIGHT)]
    deliver(*mails)
    assert DeadLetter.objects.get().reason == "may have been sent (server error)"
    retried = [op for message in published for op in message]
    assert len(retried) >= len(mails) - messages.MAX_IN_FLIGHT
    assert len(retried) + len(cio_fake.store.messages) + 1 == len(mails)


def test_a_hand_made_message_without_an_id_is_a_dead_letter_not_a_poison_loop():
    dead_letters.store([({"kind": "send_email", "id": ["x"]}, "malformed: id", None),
                        ({"kind": "send_sms"}, "malformed: id", None)], 1)
    assert DeadLetter.objects.count() == 2


def test_any_dead_letter_of_a_message_reads_its_claim():
    """However a message comes to be dead-lettered (out of retries after a crash, the poison
    limit), a claim left ``sending`` says it may have gone, and a ``sent`` one that it did."""
    in_flight, done, unclaimed = reset_mail(), reset_mail(), reset_mail()
    SentMessage.objects.create(id=in_flight.id, kind=in_flight.kind)
    SentMessage.objects.create(id=done.id, kind=done.kind, state=SentMessage.SENT)
    dead_letters.store([(mail.to_dict(), "crashed (SoftTimeLimitExceeded)", None)
                        for mail in (in_flight, done, unclaimed)], 9)
    assert sorted(DeadLetter.objects.values_list("op__id", "reason")) == sorted([
        (in_flight.id, "may have been sent (crashed (SoftTimeLimitExceeded))"),
        (unclaimed.id, "crashed (SoftTimeLimitExceeded)")])
