"""Transactional messages on their way to the App API, each sent at most once.

The App API has no idempotency key: a message it took and a message sent again are two
emails. So each message is claimed in the database by its id (``SentMessage``) before its
request leaves, and what the claim says decides:

* none: send it, and mark it ``sent`` (with Customer.io's delivery id) once it is taken;
* ``sent``: it went out before (a redelivered broker message): skipped;
* ``sending``: an earlier attempt may have sent it (its worker died mid-request): a dead letter
  "may have been sent", to review, never a blind resend.

An error that proves nothing was taken (connection refused, 429, 503, 4xx) releases the claim
and the message is retried like any op; an error after the request left (a timeout, a reset,
500, 502, 504) keeps it and makes a dead letter. Replaying a dead letter releases its claim.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import IntegrityError, router, transaction
from django.utils import timezone

from .. import credentials
from ..conf import CIOSettings
from ..exceptions import APIError, ConfigurationError, PermanentError, ValidationError
from ..models import SentMessage
from ..operations import OPERATIONS, Json, Operation, SendMessage
from ..ratelimit import Throttled, get_limiter
from ..signals import OpResult

if TYPE_CHECKING:
    from ..backends import BaseBackend
    from .engine import Delivery

MAY_HAVE_BEEN_SENT = "may have been sent"
# How long a sent message's claim is kept: far longer than a broker can hand a message back
# (the visibility timeout, a relay), so a redelivery always finds it. Older claims are
# deleted, a batch at a time, at most once per PRUNE_EVERY seconds per process.
KEEP_SENT_FOR = 7 * 24 * 3600
PRUNE_EVERY = 3600
PRUNE_BATCH = 5000
# Longest a delivery waits for the App API's shared limit, over all its messages, before it
# hands the rest back to the broker.
MAX_LIMITER_WAIT = 2


def send_messages(delivery: Delivery, backend: BaseBackend, ops: list[Operation],
         config: CIOSettings) -> None:
    """Send ``ops`` (transactional messages) one request each, recording on ``delivery``
    what became of them and what is left for a retry."""
    limiter = None if backend.delivers_inline else (
        delivery.limiter or get_limiter(delivery.workspace, "app"))
    _prune_now_and_then()
    waited = 0.0  # on the limiter, over these messages
    for number, op in enumerate(ops):
        assert isinstance(op, SendMessage)
        if number and delivery.deadline - time.monotonic() < config.timeout:
            delivery.throttled_for, delivery.pending = 0.0, ops[number:]
            return
        if limiter is not None:
            began = time.monotonic()
            budget = min(MAX_LIMITER_WAIT - waited, delivery.deadline - began - config.timeout)
            try:
                limiter.acquire(max_wait=max(0.0, budget))
            except Throttled as throttled:
                delivery.throttled_for, delivery.pending = throttled.wait, ops[number:]
                return
            waited += time.monotonic() - began
        state = claim(op)
        if state == SentMessage.SENT:
            delivery.results.append(OpResult(op, "skipped", "already sent"))
            continue
        if state == SentMessage.SENDING:
            delivery.results.append(OpResult(op, "failed", MAY_HAVE_BEEN_SENT))
            continue
        try:
            delivery_id = backend.send_message(op)
        except (PermanentError, ValidationError, ConfigurationError) as exc:
            release([op.id])  # refused, or never sent
            if isinstance(exc, ConfigurationError):
                raise
            if isinstance(exc, PermanentError) and exc.status in credentials.REFUSING_STATUSES:
                delivery.error, delivery.pending = exc, ops[number:]  # the key, not these
                return
            reason = exc.reason if isinstance(exc, PermanentError) else f"invalid: {exc}"
            status = exc.status if isinstance(exc, PermanentError) else None
            delivery.results.append(OpResult(op, "failed", reason, status))
            continue
        except APIError as exc:
            if exc.maybe_sent:  # the request left and no answer says it was not taken
                delivery.results.append(OpResult(
                    op, "failed", f"{MAY_HAVE_BEEN_SENT} ({exc.reason})", exc.status))
                continue
            release([op.id])
            delivery.error, delivery.pending = exc, ops[number:]
            return
        sent(op, delivery_id)
        delivery.results.append(OpResult(op, "sent", delivery_id=delivery_id))


def claim(op: SendMessage) -> str | None:
    """Claim ``op`` for sending: ``None`` if it is ours now, else the state an earlier claim
    left (``sending`` or ``sent``)."""
    alias = router.db_for_write(SentMessage)
    try:
        with transaction.atomic(using=alias):  # a savepoint, should a caller hold a transaction
            SentMessage.objects.using(alias).create(id=op.id, kind=op.kind,
                                                    workspace=op.workspace or "default")
    except IntegrityError:
        earlier = SentMessage.objects.using(alias).filter(id=op.id).first()
        return earlier.state if earlier else claim(op)
    return None


def sent(op: SendMessage, delivery_id: str | None) -> None:
    SentMessage.objects.using(router.db_for_write(SentMessage)).filter(id=op.id).update(
        state=SentMessage.SENT, delivery_id=delivery_id or "", sent_at=timezone.now())


def release(ids: Iterable[str]) -> None:
    """Forget the claims on these messages (unsent ones, or a replay's): they may be sent."""
    ids = list(ids)
    if ids:
        SentMessage.objects.using(router.db_for_write(SentMessage)).filter(
            id__in=ids, state=SentMessage.SENDING).delete()


_pruned_at = 0.0


def _prune_now_and_then() -> None:
    global _pruned_at
    if time.monotonic() - _pruned_at < PRUNE_EVERY:
        return
    _pruned_at = time.monotonic()
    prune()


def prune() -> int:
    """Delete up to PRUNE_BATCH claims of messages sent over KEEP_SENT_FOR ago."""
    rows = SentMessage.objects.using(router.db_for_write(SentMessage))
    since = timezone.now() - timedelta(seconds=KEEP_SENT_FOR)
    old = list(rows.filter(state=SentMessage.SENT, created_at__lt=since)
               .values_list("id", flat=True)[:PRUNE_BATCH])
    return rows.filter(id__in=old).delete()[0] if old else 0


def messages_among(ops: Iterable[Json]) -> list[Json]:
    """The transactional messages among queued ops (``Operation.to_dict()`` output)."""
    return [op for op in ops if isinstance(op, dict)
            and getattr(OPERATIONS.get(str(op.get("kind"))), "api", None) == "app"]
