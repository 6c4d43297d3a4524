"""Django's email through ``django_cio.mail.EmailBackend``: what each message becomes (an App
API ``send_email``), recorded by the locmem backend."""

import base64
from datetime import datetime, timezone
from email.mime.text import MIMEText

import pytest
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection
from django.db import transaction

import django_cio
from django_cio.exceptions import ValidationError

pytestmark = pytest.mark.django_db(transaction=True)  # commits happen: hooks run


@pytest.fixture(autouse=True)
def backend(settings):
    settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"
    settings.CUSTOMERIO = {**settings.CUSTOMERIO,
                           "BACKEND": "django_cio.backends.locmem.LocMemBackend"}
    django_cio.outbox.clear()
    yield
    django_cio.outbox.clear()


def sent():
    assert [op.kind for op in django_cio.outbox] == ["send_email"] * len(django_cio.outbox)
    return django_cio.outbox


def test_send_mail_queues_one_email_to_the_person_of_its_first_address():
    count = mail.send_mail("Hello", "Hi Ada,\nwelcome.", "Shop <shop@example.com>",
                           ["Ada <ada@example.com>", "bob@example.com"])
    [op] = sent()
    assert count == 1
    assert op.body() == {
        "identifiers": {"email": "ada@example.com"}, "to": "Ada <ada@example.com>, "
        "bob@example.com", "from": "Shop <shop@example.com>", "subject": "Hello",
        "body_plain": "Hi Ada,\nwelcome.", "body": "Hi Ada,<br>welcome.",
    }


def test_html_alternatives_cc_bcc_reply_to_headers_and_attachments():
    message = EmailMultiAlternatives(
        "Receipt", "Plain <text>", "shop@example.com", ["ada@example.com"],
        cc=["cc@example.com"], bcc=["audit@example.com"], reply_to=["help@example.com"],
        headers={"X-Order": "42"})
    message.attach_alternative("<p>Receipt</p>", "text/html")
    message.attach("receipt.pdf", b"%PDF-1.4", "application/pdf")
    message.attach(MIMEText("note", "plain"))
    message.send()
    body = sent()[0].body()
    assert body["body"] == "<p>Receipt</p>" and body["body_plain"] == "Plain <text>"
    assert (body["cc"], body["bcc"], body["reply_to"]) == ("cc@example.com",
                                                         "audit@example.com", "help@example.com")
    assert body["headers"] == {"X-Order": "42"}
    assert body["attachments"] == {"receipt.pdf": base64.b64encode(b"%PDF-1.4").decode(),
                                   "attachment.txt": base64.b64encode(b"note").decode()}


def test_customerio_options_are_attributes_as_with_anymail():
    message = EmailMessage(to=["ada@example.com"], from_email="shop@example.com")
    message.template_id = "password_reset"
    message.merge_global_data = {"token": "t0k"}
    message.identifiers = {"id": "42"}
    message.send_at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    message.track_clicks, message.track_opens = False, None
    message.disable_message_retention = True
    message.send_to_unsubscribed = False
    message.queue_draft = True
    message.esp_extra = {"preheader": "Your link"}
    message.send()
    [op] = sent()
    assert message.cio_message_id == op.id
    assert op.transactional_message_id == "password_reset"
    assert op.message_data == {"token": "t0k"}
    assert op.body()["identifiers"] == {"id": "42"}
    assert op.fields["send_at"] == 1893456000 and op.fields["tracked"] is False
    assert op.fields["preheader"] == "Your link"
    assert (op.fields["disable_message_retention"], op.fields["send_to_unsubscribed"],
            op.fields["queue_draft"]) == (True, False, True)


def test_customerio_names_win_over_anymail_names():
    message = EmailMessage(to=["ada@example.com"])
    message.transactional_message_id, message.template_id = 7, "ignored"
    message.message_data, message.merge_global_data = {"a": 1}, {"b": 2}
    message.send()
    [op] = sent()
    assert (op.transactional_message_id, op.message_data) == (7, {"a": 1})


def test_a_message_in_a_transaction_is_queued_when_it_commits():
    with transaction.atomic():
        mail.send_mail("Hello", "Hi", "shop@example.com", ["ada@example.com"])
        assert django_cio.outbox == []
    assert len(sent()) == 1


@pytest.mark.parametrize(("make", "field"), [
    (lambda: EmailMessage("Hi", "x", "shop@example.com", bcc=["a@example.com"]), "to"),
    (lambda: EmailMessage("Hi", "x", "s@example.com",
                          [f"p{n}@example.com" for n in range(16)]), "fields.to"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), attachments=[
        ("big.bin", b"\0" * (2 * 1024 * 1024 + 1), "application/octet-stream")]),
     "fields.attachments"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), identifiers={"phone": "1"}),
     "identifiers"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), template_id=True),
     "transactional_message_id"),
    (lambda: _with(EmailMultiAlternatives(to=["a@example.com"]),
                   alternatives=[("x", "text/calendar")]), "alternatives"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), tags=["receipts"]), "tags"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), merge_headers={"a": {}}),
     "merge_headers"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), track_clicks=False, track_opens=True),
     "track_clicks"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), attachments=[
        ("a.txt", "1", "text/plain"), ("a.txt", "2", "text/plain")]), "attachments"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), attachments=[_multipart()]),
     "attachments"),
    (lambda: _with(EmailMessage(to=["a@example.com"]), merge_data={"a@example.com": {}}),
     "merge_data"),
])
def test_bad_input_fails_at_the_call_naming_the_field(make, field):
    with pytest.raises(ValidationError) as refused:
        make().send()
    assert refused.value.field == field
    assert django_cio.outbox == []


def test_fail_silently_counts_only_what_was_queued():
    good = EmailMessage("Hi", "x", "shop@example.com", ["ada@example.com"])
    bad = EmailMessage("Hi", "x", "shop@example.com", cc=["ada@example.com"])
    assert get_connection(fail_silently=True).send_messages([bad, good]) == 1
    assert len(sent()) == 1


def test_a_connection_may_name_a_workspace(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": {"eu": {"REGION": "eu"}}}
    get_connection(workspace="eu").send_messages([EmailMessage(to=["ada@example.com"])])
    assert sent()[0].workspace == "eu"


def _with(message, **attributes):
    for name, value in attributes.items():
        setattr(message, name, value)
    return message


def _multipart():
    from email.mime.multipart import MIMEMultipart

    return MIMEMultipart()


def test_an_html_message_may_carry_its_text_as_an_alternative_and_headers_override():
    from email.message import MIMEPart

    message = EmailMultiAlternatives("Hi", "<p>Hi</p>", "shop@example.com", ["a@example.com"],
                                     headers={"From": "Shop <news@example.com>",
                                              "Reply-To": "help@example.com", "X-Id": "1"})
    message.content_subtype = "html"
    message.attach_alternative("Hi", "text/plain")
    part = MIMEPart()  # Django 6 attaches these as they are
    part.set_content(b"col\n1\n", maintype="text", subtype="csv", filename="rows.csv")
    message.attachments.append(part)
    message.send()
    fields = sent()[0].fields
    assert (fields["body"], fields["body_plain"]) == ("<p>Hi</p>", "Hi")
    assert (fields["from"], fields["reply_to"]) == ("Shop <news@example.com>",
                                                    "help@example.com")
    assert fields["headers"] == {"X-Id": "1"}
    assert fields["attachments"] == {"rows.csv": base64.b64encode(b"col\n1\n").decode()}
