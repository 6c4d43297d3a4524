"""Django's email, sent as Customer.io transactional messages through django-cio's queue::

    EMAIL_BACKEND = "django_cio.mail.EmailBackend"

``send_mail()``, ``EmailMessage`` and ``EmailMultiAlternatives`` then queue one App API
``send_email`` per message, after the current transaction commits; the caller never waits for
Customer.io. Customer.io's own options are attributes of the message, as django-anymail takes
an ESP's (and anymail's own names work too)::

    message = EmailMessage(to=["ada@example.com"])
    message.template_id = "password_reset"          # or transactional_message_id
    message.merge_global_data = {"token": token}    # or message_data
    message.send()

See docs/email.md for every attribute.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Iterable, Sequence
from email.message import Message
from email.utils import getaddresses
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.template.defaultfilters import linebreaksbr
from django.utils.encoding import force_str

from .exceptions import ConfigurationError, ValidationError
from .operations import Person
from .workspaces import Workspace

KIND = "send_email"
# Customer.io's message options, as attributes of an EmailMessage: the App API's field names.
CUSTOMERIO_FLAGS = ("disable_message_retention", "send_to_unsubscribed", "queue_draft",
                    "fake_bcc", "disable_css_preprocessing")
# django-anymail attributes the App API has nothing for: refused, never silently dropped.
UNSUPPORTED = {"merge_data": "one message goes to one person: send one per recipient",
               "merge_headers": "one message goes to one person: send one per recipient",
               "merge_metadata": "Customer.io keeps no per-message metadata",
               "metadata": "Customer.io keeps no per-message metadata",
               "tags": "Customer.io keeps no per-message tags",
               "envelope_sender": "Customer.io sets the envelope sender"}
# Alternatives the App API has a field for.
ALTERNATIVES = {"text/html": "body", "text/plain": "body_plain", "text/x-amp-html": "body_amp"}


class EmailBackend(BaseEmailBackend):
    """Queues each message as a Customer.io transactional email (``django_cio.send_email``)
    and sets its ``cio_message_id`` (the id ``post_send`` results and the admin show).

    ``send_messages`` returns how many it queued; a message Customer.io could not take (no
    recipient, too many, an attachment too large, a bad option) raises ``ValidationError``
    naming the field, unless ``fail_silently``. ``workspace="eu"`` (``get_connection``'s
    keyword) sends through a named workspace.
    """

    def __init__(self, fail_silently: bool = False, workspace: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.verbs = Workspace(workspace)

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        queued = 0
        for message in email_messages:
            try:
                message.cio_message_id = self.verbs.send_email(  # type: ignore[attr-defined]
                    recipient(message), template(message), message_data=data(message),
                    **fields(message))
            except (ValidationError, ConfigurationError):  # what the call itself refuses
                if not self.fail_silently:
                    raise
                continue
            queued += 1
        return queued


def recipient(message: EmailMessage) -> Any:
    """Who the message is to, in Customer.io: ``message.identifiers`` (``{"id": 42}``, or by
    ``email`` or ``cio_id``), else the person with the first ``to`` address."""
    given = getattr(message, "identifiers", None)
    if given is not None:
        if not (isinstance(given, dict) and len(given) == 1
                and next(iter(given)) in ("id", "email", "cio_id")):
            raise ValidationError(KIND, "identifiers", "must be one of {'id': ...}, "
                                  "{'email': ...} or {'cio_id': ...}")
        return Person(**given)
    addresses = [address for _, address in getaddresses(map(force_str, message.to)) if address]
    if not addresses:
        raise ValidationError(KIND, "to", "is empty: an email needs a recipient")
    return Person(email=addresses[0])


def template(message: EmailMessage) -> int | str | None:
    return _option(message, "transactional_message_id", "template_id")


def data(message: EmailMessage) -> dict[str, Any] | None:
    return _option(message, "message_data", "merge_global_data")


def fields(message: EmailMessage) -> dict[str, Any]:
    """The App API's fields for ``message``: its addresses, content, headers, attachments,
    then Customer.io's options (``esp_extra`` last: it may set any field)."""
    for name, why in UNSUPPORTED.items():
        if getattr(message, name, None):
            raise ValidationError(KIND, name, f"is not supported: {why}")
    values: dict[str, Any] = {"to": _joined(message.to), "cc": _joined(message.cc),
                              "bcc": _joined(message.bcc), "reply_to": _joined(message.reply_to),
                              "from": force_str(message.from_email or ""),
                              "subject": force_str(message.subject or ""), **_bodies(message)}
    headers = {str(name): force_str(value) for name, value in message.extra_headers.items()}
    for header, field in (("from", "from"), ("reply-to", "reply_to")):  # as Django does
        for name in [name for name in headers if name.lower() == header]:
            values[field] = headers.pop(name)
    values["headers"] = headers or None
    values["attachments"] = _attachments(message.attachments) or None
    values.update(_options(message))
    values.update(getattr(message, "esp_extra", None) or {})
    return {name: value for name, value in values.items() if value not in ("", None)}


def _option(message: EmailMessage, name: str, anymail_name: str) -> Any:
    value = getattr(message, name, None)
    return value if value is not None else getattr(message, anymail_name, None)


def _joined(addresses: Iterable[str]) -> str:
    return ", ".join(map(force_str, addresses))  # lazy translations too, as Django takes them


def _bodies(message: EmailMessage) -> dict[str, str]:
    """``body`` (HTML), ``body_plain`` and ``body_amp`` from the body and its alternatives.
    A plain-text-only message also gets an HTML body (escaped, line breaks kept): the App
    API's ``body`` is HTML."""
    bodies: dict[str, str] = {}
    text = force_str(message.body or "")
    if message.content_subtype == "html":
        bodies["body"] = text
    else:
        bodies["body_plain"] = text
    for content, mimetype in getattr(message, "alternatives", None) or ():
        field = ALTERNATIVES.get(mimetype)
        if field is None:
            raise ValidationError(KIND, "alternatives", f"holds {mimetype!r}; Customer.io "
                                  f"takes {', '.join(ALTERNATIVES)}")
        bodies[field] = force_str(content)
    if "body" not in bodies and text:
        bodies["body"] = str(linebreaksbr(text, autoescape=True))
    return bodies


def _attachments(items: Iterable[Any]) -> dict[str, str]:
    """Django's attachments as the App API's ``file name -> base64`` (a name once only)."""
    attachments: dict[str, str] = {}
    for item in items:
        name, content = _attachment(item)
        if name in attachments:
            raise ValidationError(KIND, "attachments", "hold two files of one name; "
                                  "Customer.io keys attachments by file name")
        attachments[name] = base64.b64encode(content).decode()
    return attachments


def _attachment(item: Any) -> tuple[str, bytes]:
    """One attachment: ``(filename, content, mimetype)``, or a MIME part (``MIMEBase``, or
    Django 6's ``MIMEPart``)."""
    content: Any
    if isinstance(item, Message):
        if item.is_multipart():
            raise ValidationError(KIND, "attachments", "hold a multipart MIME part; attach "
                                  "each file on its own")
        name = item.get_filename() or _unnamed(item.get_content_type())
        content = item.get_payload(decode=True) or b""
    else:
        filename, content, mimetype = item
        name = filename or _unnamed(mimetype)
    return name, content.encode() if isinstance(content, str) else bytes(content)


def _unnamed(mimetype: str | None) -> str:
    return "attachment" + (mimetypes.guess_extension(mimetype or "") or ".bin")


def _options(message: EmailMessage) -> dict[str, Any]:
    """Customer.io's own options, and anymail's ``send_at`` and tracking attributes."""
    options = {name: getattr(message, name) for name in CUSTOMERIO_FLAGS
               if getattr(message, name, None) is not None}
    send_at = getattr(message, "send_at", None)
    if send_at is not None:
        options["send_at"] = send_at  # a datetime, a date or Unix seconds
    tracking = {getattr(message, name, None) for name in ("track_clicks", "track_opens")}
    tracking.discard(None)
    if len(tracking) > 1:
        raise ValidationError(KIND, "track_clicks", "differs from track_opens: Customer.io "
                              "tracks both or neither")
    if tracking:
        options["tracked"] = tracking.pop()
    if getattr(message, "language", None):
        options["language"] = message.language  # type: ignore[attr-defined]
    return options
