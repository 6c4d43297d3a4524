"""Transactional messages: an email, a push notification or an SMS that Customer.io's App API
(``POST /v1/send/email``, ``/push``, ``/sms``) renders from a transactional message template
and sends to one person. Each carries an ``id`` fixed when it is made: django-cio's own key
for sending it once (the App API offers none).

Fields are the App API's own names; each op checks those it knows, their types and the
documented limits (15 recipients, 2 MB of attachments, 1 MB of the rest), naming the field
and never the value (addresses and bodies are PII).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ..exceptions import ValidationError
from ..privacy import safe_label
from .kinds import PersonOp, V1Request
from .limits import MAX_ATTACHMENTS_BYTES, MAX_MESSAGE_BYTES, MAX_RECIPIENTS
from .values import Json, check_event_id, check_id, check_timestamp, dumps, json_safe, new_event_id

_COMMON = {"disable_message_retention": bool, "send_to_unsubscribed": bool,
           "queue_draft": bool, "send_at": int, "language": str}
CHANNEL_FIELDS: dict[str, dict[str, type]] = {
    "email": {**_COMMON, "to": str, "cc": str, "bcc": str, "from": str, "reply_to": str,
              "subject": str, "body": str, "body_plain": str, "body_amp": str,
              "preheader": str, "headers": dict, "attachments": dict, "tracked": bool,
              "fake_bcc": bool, "disable_css_preprocessing": bool},
    "push": {**_COMMON, "to": str, "title": str, "message": str, "image_url": str,
             "link": str, "sound": str, "custom_data": dict, "custom_device": dict,
             "custom_payload": dict},
    "sms": {**_COMMON, "to": str, "from": str, "tracked": bool},
}


@dataclass(frozen=True, repr=False)
class SendMessage(PersonOp):
    """A transactional message to one person (``person_id``, by id, email or cio_id), from
    template ``transactional_message_id`` with ``message_data`` for its Liquid, and the
    channel's ``fields`` (``to``, ``subject``, ...)."""

    api: ClassVar[str] = "app"
    batchable: ClassVar[bool] = False
    channel: ClassVar[str]
    transactional_message_id: int | str | None = None
    message_data: Json = field(default_factory=dict)
    fields: Json = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        super().__post_init__()
        template = self.transactional_message_id
        if template is None and self.channel != "email":
            raise ValidationError(self.kind, "transactional_message_id", "is missing: a "
                                  f"{self.channel} message is sent from a transactional message")
        if template is not None and (
                isinstance(template, bool) or not isinstance(template, (int, str))
                or (isinstance(template, int) and not 0 < template < 2**63)):
            raise ValidationError(self.kind, "transactional_message_id", "must be the "
                                  "message's id (an integer) or its trigger name")
        if isinstance(template, str):
            self._set("transactional_message_id", check_id(
                self.kind, "transactional_message_id", template))
        if not isinstance(self.message_data, Mapping):
            raise ValidationError(self.kind, "message_data", "must be a mapping")
        self._set("message_data", json_safe(self.message_data, self.kind, "message_data"))
        self._set("fields", self._checked_fields())
        self._set("id", check_event_id(self.kind, self.id))
        size = len(dumps({**self.body(), "attachments": None}))
        if size > MAX_MESSAGE_BYTES:
            raise ValidationError(self.kind, "fields", f"make the request {size} bytes without "
                                  f"attachments; the limit is {MAX_MESSAGE_BYTES}",
                                  f"{MAX_MESSAGE_BYTES} bytes")

    def _checked_fields(self) -> Json:
        if not isinstance(self.fields, Mapping):
            raise ValidationError(self.kind, "fields", "must be a mapping")
        known = CHANNEL_FIELDS[self.channel]
        clean: Json = {}
        for name, value in self.fields.items():
            if not isinstance(name, str):
                raise ValidationError(self.kind, "fields", f"has a {type(name).__name__} key; "
                                      f"keys are the App API's field names")
            where = f"fields.{safe_label(name)}"
            if name not in known:
                raise ValidationError(self.kind, where, f"is not a field of a {self.channel} "
                                      f"message ({', '.join(sorted(known))})")
            expected = known[name]
            if name == "send_at":
                value = check_timestamp(self.kind, where, value)
            elif expected is bool and not isinstance(value, bool):
                raise ValidationError(self.kind, where, "must be True or False")
            elif expected is str and not (isinstance(value, str) and value.strip()):
                raise ValidationError(self.kind, where, "must be a non-blank string")
            elif expected is dict:
                if not isinstance(value, Mapping):
                    raise ValidationError(self.kind, where, "must be a mapping")
                value = json_safe(value, self.kind, where)
            clean[str(name)] = value
        self._check_channel(clean)
        return clean

    def _check_channel(self, fields: Json) -> None:
        """What the channel itself requires (overridden by email and SMS)."""

    def single(self) -> V1Request:
        return V1Request("POST", f"/v1/send/{self.channel}", self.body())

    def v1(self) -> V1Request:
        return self.single()

    def v2(self) -> Json:
        raise ValidationError(self.kind, "v2", "does not exist: messages go to the App API")

    def body(self) -> Json:
        """The App API request body."""
        body: Json = {"identifiers": {self.id_type: self.person_id}, **self.fields}
        if self.transactional_message_id is not None:
            body["transactional_message_id"] = self.transactional_message_id
        if self.message_data:
            body["message_data"] = dict(self.message_data)
        return body

    def redacted(self) -> Json:
        return {**super().redacted(), "fields": sorted(self.fields),
                "message_data": sorted(self.message_data)}


@dataclass(frozen=True, repr=False)
class SendEmail(SendMessage):
    """A transactional email: ``fields["to"]`` (comma-separated, with ``cc`` and ``bcc`` at
    most 15 addresses), and optionally the subject, HTML ``body``, ``body_plain``,
    ``attachments`` (file name -> base64, 2 MB in all) and the rest of the App API's fields."""

    kind = "send_email"
    action = "send_email"
    channel = "email"

    def _check_channel(self, fields: Json) -> None:
        if "to" not in fields:
            raise ValidationError(self.kind, "fields", "has no 'to': an email needs a "
                                  "recipient")
        recipients = sum(len([part for part in fields.get(name, "").split(",") if part.strip()])
                         for name in ("to", "cc", "bcc"))
        if recipients > MAX_RECIPIENTS:
            raise ValidationError(self.kind, "fields.to", f"with cc and bcc makes {recipients} "
                                  f"recipients; the limit is {MAX_RECIPIENTS}",
                                  f"{MAX_RECIPIENTS} recipients")
        total = 0
        for name, content in fields.get("attachments", {}).items():
            where = f"fields.attachments.{safe_label(name)}"
            if "." not in name.strip(".") or not name.strip():
                raise ValidationError(self.kind, where, "must be a file name with an extension")
            try:
                total += len(base64.b64decode(content, validate=True))
            except (binascii.Error, TypeError, ValueError):
                raise ValidationError(self.kind, where, "must be base64") from None
        if total > MAX_ATTACHMENTS_BYTES:
            raise ValidationError(self.kind, "fields.attachments", f"are {total} bytes; the "
                                  f"limit is {MAX_ATTACHMENTS_BYTES}",
                                  f"{MAX_ATTACHMENTS_BYTES} bytes")
        headers = fields.get("headers", {})
        for name, value in headers.items():
            if not isinstance(value, str):
                raise ValidationError(self.kind, f"fields.headers.{safe_label(name)}",
                                      "must be a string")


@dataclass(frozen=True, repr=False)
class SendPush(SendMessage):
    """A transactional push notification to the person's devices (``fields["to"]``: "all",
    "last_used" or a device token)."""

    kind = "send_push"
    action = "send_push"
    channel = "push"


@dataclass(frozen=True, repr=False)
class SendSms(SendMessage):
    """A transactional SMS to ``fields["to"]``, a phone number in E.164 form."""

    kind = "send_sms"
    action = "send_sms"
    channel = "sms"

    def _check_channel(self, fields: Json) -> None:
        if "to" not in fields:
            raise ValidationError(self.kind, "fields", "has no 'to': an SMS needs a phone "
                                  "number")
        to = fields["to"]
        if not (to.startswith("+") and to[1:].isdigit() and 8 <= len(to) <= 16):
            raise ValidationError(self.kind, "fields.to", "must be a phone number in E.164 "
                                  "form (+ and up to 15 digits)")
