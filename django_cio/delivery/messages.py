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
500, 502, 504) keeps it and makes a dead letter. Replaying a dead letter releases its claim
(once no attempt can still be in flight).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, IntegrityError, router, transaction
from django.utils import timezone

from .. import credentials
from ..conf import CIOSettings, get_settings
from ..exceptions import APIError, ConfigurationError, PermanentError, ValidationError
from ..models import SentMessage
from ..operations import OPERATIONS, Json, Operation, SendMessage
from ..ratelimit import Throttled, get_limiter
from ..signals import OpResult

if TYPE_CHECKING:
    from ..backends import BaseBackend
    from .engine import Delivery

logger = logging.getLogger("django_cio")

MAY_HAVE_BEEN_SENT = "may have been sent"
# How long a sent message's claim is kept: far longer than a broker can hand a message back
# (the visibility timeout, a relay), so a redelivery always finds it. Older claims are
# deleted, batches for up to PRUNE_SECONDS, at most once per PRUNE_EVERY seconds per process.
KEEP_SENT_FOR = 7 * 24 * 3600
PRUNE_EVERY = 600
PRUNE_BATCH = 5000
PRUNE_SECONDS = 2  # at most, each time: 100 sends a second take far fewer batches
# Longest a delivery waits for the App API's shared limit, over all its messages, before it
# hands the rest back to the broker.
MAX_LIMITER_WAIT = 2
# Requests a delivery keeps in flight: a message cannot share a request, and one at a time
# would hold a worker process to one message per round trip (20/s at 50 ms), far under the
# App API's 100/s. Each in flight when a worker dies is one "may have been sent".
MAX_IN_FLIGHT = 8
# Longest an attempt can be in flight: a delivery starts no request after 60 s, and a request
# ends about TIMEOUT later (10 s by default; a longer one adds to 60 s), unless its answer
# trickles in byte by byte. A replay never releases a younger claim.
IN_FLIGHT_AT_MOST = 120


def send_messages(delivery: Delivery, backend: BaseBackend, ops: list[Operation],
                  config: CIOSettings) -> None:
    """Send ``ops`` (transactional messages) one request each, several in flight, recording
    on ``delivery`` what became of them and what is left for a retry."""
    _prune_now_and_then()
    _Sender(delivery, backend, config).run([op for op in ops if isinstance(op, SendMessage)])


_threads: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """The process's sending threads (made again after a fork): each keeps its connection to
    the App API from one delivery to the next."""
    global _threads
    if _threads is None or _threads[0] != os.getpid():
        _threads = (os.getpid(), ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="cio-send"))
    return _threads[1]


class _Sender:
    """One delivery's messages: each waits for a slot of the shared limit and is claimed in
    the main thread, its request runs in a pool thread, and its outcome is settled back in
    the main thread. The first answer that says "stop" (429, 503, a refused key, no
    connection, or one that may follow a send: a timeout, a 500) stops new requests; those
    in flight finish and are settled, even when the delivery itself fails."""

    def __init__(self, delivery: Delivery, backend: BaseBackend, config: CIOSettings) -> None:
        self.delivery, self.backend, self.config = delivery, backend, config
        self.limiter = None if backend.delivers_inline else (
            delivery.limiter or get_limiter(delivery.workspace, "app"))
        # Inline backends (tests) send in this thread, in the order of the calls.
        self.width = 1 if backend.delivers_inline else MAX_IN_FLIGHT
        self.waited = 0.0  # on the limiter, over these messages
        self.started = 0
        self.stopped = False
        self.crash: Exception | None = None

    def run(self, ops: list[SendMessage]) -> None:
        waiting = list(ops)
        in_flight: dict[Future[str | None], SendMessage] = {}
        try:
            while waiting or in_flight:
                while waiting and not self.stopped and len(in_flight) < self.width:
                    if not self.may_start():
                        break
                    op = waiting.pop(0)
                    if self.claimed(op):
                        in_flight[self.submit(op)] = op
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    self.settle(in_flight.pop(future), future)
        except BaseException:  # the database, a time limit: what was sent is still recorded
            for future, op in in_flight.items():
                with contextlib.suppress(Exception):
                    self.settle(op, future)
            raise
        self.delivery.pending += waiting
        if self.crash is not None:  # once the others are settled: their outcomes are known
            raise self.crash

    def submit(self, op: SendMessage) -> Future[str | None]:
        if not self.backend.delivers_inline:
            return _pool().submit(self.backend.send_message, op)
        done: Future[str | None] = Future()  # in this thread: a test's database is its own
        try:
            done.set_result(self.backend.send_message(op))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def may_start(self) -> bool:
        """Whether another request may leave now: time left, and a slot of the limit."""
        delivery, timeout = self.delivery, self.config.timeout
        if self.started and delivery.deadline - time.monotonic() < timeout:
            delivery.throttled_for, self.stopped = 0.0, True
            return False
        if self.limiter is not None:
            began = time.monotonic()
            budget = min(MAX_LIMITER_WAIT - self.waited, delivery.deadline - began - timeout)
            try:
                self.limiter.acquire(max_wait=max(0.0, budget))
            except Throttled as throttled:
                delivery.throttled_for, self.stopped = throttled.wait, True
                return False
            self.waited += time.monotonic() - began
        self.started += 1
        return True

    def claimed(self, op: SendMessage) -> bool:
        """Claim ``op``; if an earlier attempt did, record what that means instead."""
        state = claim(op)
        if state == SentMessage.SENT:
            self.delivery.results.append(OpResult(op, "skipped", "already sent"))
        elif state == SentMessage.SENDING:
            self.delivery.results.append(OpResult(op, "failed", MAY_HAVE_BEEN_SENT))
        return state is None

    def settle(self, op: SendMessage, future: Future[str | None]) -> None:
        results = self.delivery.results
        try:
            delivery_id = future.result()
        except (PermanentError, ValidationError) as exc:
            release([op.id])  # refused: it may be sent again
            if isinstance(exc, PermanentError) and exc.status in credentials.REFUSING_STATUSES:
                self.hold(op, exc)  # the key, not this message
            elif isinstance(exc, PermanentError):
                results.append(OpResult(op, "failed", exc.reason, exc.status))
            else:
                results.append(OpResult(op, "failed", f"invalid: {exc}"))
        except APIError as exc:
            if exc.maybe_sent:  # the request left and no answer says it was not taken
                results.append(OpResult(op, "failed", f"{MAY_HAVE_BEEN_SENT} ({exc.reason})",
                                        exc.status))
                # Nor are the rest sent into a failing API: each would be one more to review.
                self.delivery.error, self.stopped = exc, True
            else:
                release([op.id])
                self.hold(op, exc)
        except Exception as exc:  # no App API key, or a bug: the delivery crashes, later
            if isinstance(exc, ConfigurationError):
                release([op.id])  # raised before any request
            self.crash, self.stopped = self.crash or exc, True
        else:
            sent(op, delivery_id)
            results.append(OpResult(op, "sent", delivery_id=delivery_id))

    def hold(self, op: SendMessage, error: APIError) -> None:
        """Keep ``op`` for a retry, and start no other request."""
        self.delivery.error, self.stopped = error, True
        self.delivery.pending.append(op)


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
    """Mark ``op`` sent, claim or no claim (a replay may have released it meanwhile)."""
    rows = SentMessage.objects.using(router.db_for_write(SentMessage))
    fields = {"state": SentMessage.SENT, "delivery_id": delivery_id or "",
              "sent_at": timezone.now()}
    if not rows.filter(id=op.id).update(**fields):
        rows.bulk_create([SentMessage(id=op.id, kind=op.kind,
                                      workspace=op.workspace or "default", **fields)],
                         ignore_conflicts=True)


def release(ids: Iterable[str], settled_only: bool = False) -> None:
    """Forget the claims on these messages (unsent ones, or a replay's): they may be sent.
    ``settled_only``: only claims older than any attempt can be in flight (IN_FLIGHT_AT_MOST),
    so a replay never sends a message whose first request has not been answered yet."""
    ids = list(ids)
    if ids:
        claims = SentMessage.objects.using(router.db_for_write(SentMessage)).filter(
            id__in=ids, state=SentMessage.SENDING)
        if settled_only:
            config = get_settings()
            longest = max(get_settings(name).timeout for name in config.workspace_names)
            claims = claims.filter(created_at__lt=timezone.now() - timedelta(
                seconds=max(IN_FLIGHT_AT_MOST, 60 + longest)))
        claims.delete()


def reviewed(failed: list[tuple[Json, str, int | None]]) -> list[tuple[Json, str, int | None]]:
    """Failed ops as dead letters should say, read against the messages' claims: a message
    sent is no failure; one whose claim is left "sending" (a worker lost, a time limit, out of
    retries mid-request) may have been sent, whatever else went wrong."""
    ids = message_ids(op for op, _, _ in failed)
    if not ids:
        return failed
    states = dict(SentMessage.objects.using(router.db_for_write(SentMessage)).filter(
        id__in=ids).values_list("id", "state"))
    kept = []
    for op, reason, status in failed:
        state = states.get(op["id"]) if message_ids([op]) else None
        if state == SentMessage.SENT:
            continue
        if state == SentMessage.SENDING and not reason.startswith(MAY_HAVE_BEEN_SENT):
            reason = f"{MAY_HAVE_BEEN_SENT} ({reason})"
        kept.append((op, reason, status))
    return kept


_pruned_at: float | None = None


def _prune_now_and_then() -> None:
    global _pruned_at
    if _pruned_at is not None and time.monotonic() - _pruned_at < PRUNE_EVERY:
        return
    _pruned_at = time.monotonic()
    try:
        prune()
    except DatabaseError as exc:  # housekeeping: never what fails a delivery
        logger.warning("customerio: cannot prune sent-message claims (%s)", type(exc).__name__)


def prune(seconds: float = PRUNE_SECONDS) -> int:
    """Delete claims of messages sent over KEEP_SENT_FOR ago, a batch at a time, for at most
    ``seconds``; how many."""
    rows = SentMessage.objects.using(router.db_for_write(SentMessage))
    since, deleted = timezone.now() - timedelta(seconds=KEEP_SENT_FOR), 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        old = list(rows.filter(state=SentMessage.SENT, created_at__lt=since).order_by()
                   .values_list("id", flat=True)[:PRUNE_BATCH])
        if not old:
            break
        deleted += rows.filter(id__in=old).delete()[0]
    return deleted


def messages_among(ops: Iterable[Json]) -> list[Json]:
    """The transactional messages among queued ops (``Operation.to_dict()`` output)."""
    return [op for op in ops if isinstance(op, dict)
            and getattr(OPERATIONS.get(str(op.get("kind"))), "api", None) == "app"]


def message_ids(ops: Iterable[Json]) -> list[str]:
    """The ids of the transactional messages among queued ops (a hand-made one may lack its
    id, or hold another type: it has no claim)."""
    return [op["id"] for op in messages_among(ops) if isinstance(op.get("id"), str)]
