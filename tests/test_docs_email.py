"""The snippets docs/email.md marks with ``<!-- test: ... -->``, run as written, with the
locmem backend recording what they queue."""

import pytest

import django_cio
from tests.test_docs_track_api import run_snippet

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def email_backend(settings):
    settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "shop@example.com"


def test_the_send_mail_snippet_queues_two_emails(cio_outbox):
    run_snippet("send_mail", "email.md")
    plain, rich = cio_outbox
    assert plain.fields["from"] == "shop@example.com" and "body_plain" in plain.fields
    assert rich.fields["body"].startswith("<p>") and "receipt.pdf" in rich.fields["attachments"]
    assert rich.fields["cc"] == "accounts@example.com"


def test_the_template_snippet_uses_anymail_names(cio_outbox):
    run_snippet("template", "email.md")
    [op] = cio_outbox
    assert op.transactional_message_id == "password_reset"
    assert op.body()["identifiers"] == {"id": "42"}
    assert op.fields["disable_message_retention"] is True


def test_the_push_and_sms_snippet_queues_each_channel(cio_outbox):
    run_snippet("push_and_sms", "email.md")
    assert [op.kind for op in cio_outbox] == ["send_push", "send_sms", "send_email"]
    assert cio_outbox[1].id_type == "email"
    assert django_cio.outbox is cio_outbox
