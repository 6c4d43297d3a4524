"""Transactional messages (App API ops): checked at the call, rendered as the App API reads
them, and never showing an address, a body or message data."""

import base64
import json

import pytest

from django_cio import Person
from django_cio.exceptions import ValidationError
from django_cio.operations import MAX_ID_BYTES, Operation, SendEmail, SendPush, SendSms

ADA = Person(email="ada@example.com")


def email(**fields):
    return SendEmail(ADA, "welcome", {"name": "Ada"}, {"to": "ada@example.com", **fields})


def test_an_email_renders_as_the_app_api_reads_it():
    op = email(subject="Hi", attachments={"a.txt": base64.b64encode(b"x").decode()})
    assert op.single() == ("POST", "/v1/send/email", {
        "identifiers": {"email": "ada@example.com"}, "transactional_message_id": "welcome",
        "to": "ada@example.com", "subject": "Hi", "message_data": {"name": "Ada"},
        "attachments": {"a.txt": "eA=="}})
    assert not op.batchable and Operation.from_dict(json.loads(json.dumps(op.to_dict()))) == op
    assert SendPush("42", 7).single() == ("POST", "/v1/send/push", {
        "identifiers": {"id": "42"}, "transactional_message_id": 7})


def test_nothing_in_a_message_shows_in_its_repr():
    text = repr(email(subject="Secret subject", body="<p>secret</p>")) + json.dumps(
        email().redacted())
    assert "ada@" not in text and "secret" not in text.lower() and "Ada" not in text


@pytest.mark.parametrize(("build", "field"), [
    (lambda: SendEmail(ADA, "welcome", fields={}), "fields"),
    (lambda: SendSms("42", 7), "fields"),
    (lambda: email(to=",".join(f"p{n}@example.com" for n in range(16))), "fields.to"),
    (lambda: email(cc=",".join(f"p{n}@example.com" for n in range(15))), "fields.to"),
    (lambda: email(attachments={"a.txt": "not base64!"}), "fields.attachments.<key>"),
    (lambda: email(attachments={"noextension": "eA=="}), "fields.attachments.noextension"),
    (lambda: email(attachments={"big.bin": base64.b64encode(b"x" * 2_000_001).decode()}),
     "fields.attachments"),
    (lambda: email(body="x" * 1_000_001), "fields"),
    (lambda: email(colour="red"), "fields.colour"),
    (lambda: email(tracked="yes"), "fields.tracked"),
    (lambda: email(subject=""), "fields.subject"),
    (lambda: email(headers={"X-Tag": 5}), "fields.headers.X-Tag"),
    (lambda: email(send_at="tomorrow"), "fields.send_at"),
    (lambda: SendEmail(ADA, True, fields={"to": "a@b.c"}), "transactional_message_id"),
    (lambda: SendEmail(ADA, "x" * (MAX_ID_BYTES + 1), fields={"to": "a@b.c"}),
     "transactional_message_id"),
    (lambda: SendPush("42"), "transactional_message_id"),
    (lambda: SendSms("42", 7, fields={"to": "0612345678"}), "fields.to"),
    (lambda: SendEmail(ADA, 7, "not a mapping", {"to": "a@b.c"}), "message_data"),
])
def test_a_bad_message_is_refused_at_the_call_naming_the_field(build, field):
    with pytest.raises(ValidationError) as error:
        build()
    assert error.value.field == field, error.value


def test_an_email_may_go_without_a_template_but_push_and_sms_may_not():
    assert "transactional_message_id" not in SendEmail(ADA, fields={"to": "a@b.c"}).body()
    assert SendSms("42", 7, fields={"to": "+33612345678"}).body()["to"] == "+33612345678"
