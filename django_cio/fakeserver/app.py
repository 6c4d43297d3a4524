"""The App API's transactional send endpoints (``POST /v1/send/email``, ``/push``, ``/sms``) as
the fake speaks them: what Customer.io checks of a message, and each one kept with the
``delivery_id`` it was given. The App API has no idempotency key: a message sent twice is two
messages here too, which is how tests see duplicates."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from ..operations import dumps
from ..operations.limits import MAX_ATTACHMENTS_BYTES, MAX_MESSAGE_BYTES, MAX_RECIPIENTS
from .protocol import Reply
from .store import Json

CHANNELS = ("email", "push", "sms")
IDENTIFIERS = ("id", "email", "cio_id")


def refuse(status: int, message: str) -> Reply:
    return Reply(status, {"meta": {"error": message}})


def check_message(channel: str, body: Any,
                  templates: list[int | str] | None = None) -> None:
    """Raise the ``Reply`` Customer.io would give to a message it refuses (``templates``:
    the transactional messages the workspace has; None: any)."""
    if not isinstance(body, dict):
        raise refuse(400, "body must be a JSON object")
    identifiers = body.get("identifiers")
    named = (isinstance(identifiers, dict) and len(identifiers) == 1
             and next(iter(identifiers)) in IDENTIFIERS
             and isinstance(next(iter(identifiers.values())), str))
    if not named and (channel != "email" or identifiers is not None):
        raise refuse(400, "identifiers must hold one of id, email or cio_id")
    template = body.get("transactional_message_id")
    if (template is None and channel != "email") or (
            template is not None and (isinstance(template, bool)
                                      or not isinstance(template, (int, str)))):
        raise refuse(400, "transactional_message_id must be an id or a trigger name")
    if template is not None and templates is not None and template not in templates:
        raise refuse(404, "transactional message not found")
    if channel in ("email", "sms") and not (isinstance(body.get("to"), str) and body["to"]):
        raise refuse(400, "to is required")
    if channel == "email":
        _check_email(body)
    if len(dumps({**body, "attachments": None})) > MAX_MESSAGE_BYTES:
        raise refuse(400, "the request is over 1 MB")


def _check_email(body: Json) -> None:
    recipients = sum(len([part for part in str(body.get(name) or "").split(",") if part.strip()])
                     for name in ("to", "cc", "bcc"))
    if recipients > MAX_RECIPIENTS:
        raise refuse(400, f"more than {MAX_RECIPIENTS} recipients")
    attachments = body.get("attachments", {})
    if not isinstance(attachments, dict):
        raise refuse(400, "attachments must be an object")
    total = 0
    for name, content in attachments.items():
        try:
            total += len(base64.b64decode(content, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise refuse(400, f"attachment {name[:40]!r} is not base64") from None
    if total > MAX_ATTACHMENTS_BYTES:
        raise refuse(413, "Total attachment size exceeds the limit")


def accept(messages: list[Json], channel: str, body: Json) -> Json:
    """Keep a message; the answer Customer.io gives."""
    answer = {"delivery_id": f"fake-{len(messages) + 1:08d}", "queued_at": int(time.time())}
    messages.append({"channel": channel, **answer, "body": body})
    return answer
