"""The delivery engine: a message's ops through dedup, the shared limit and the backend, and
what becomes of each (sent, skipped, dead letter, or a retry handed on)."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

from celery.exceptions import Reject

from .. import credentials, dedup, metrics, outage
from ..backends import BaseBackend, backend_class, get_backend
from ..broker.drain import drain, settle
from ..broker.messages import Message, redelivered
from ..broker.publish import split
from ..client import OpError
from ..conf import DEFAULT_WORKSPACE, CIOSettings, get_settings
from ..exceptions import (
    APIError,
    ConfigurationError,
    PermanentError,
    RateLimited,
    ValidationError,
)
from ..operations import Identify, Json, Move, Operation
from ..packing import collapse, pack
from ..ratelimit import Throttled, get_limiter
from ..routing import by_workspace, one_workspace
from ..signals import OpResult, post_send, pre_send
from . import dead_letters
from .messages import messages_among, send_messages
from .retry import backoff, retry_after_crash, schedule, too_many_deliveries

logger = logging.getLogger("django_cio")

# Most queued messages (and ops) a deliver task drains to send with its own: one request's
# worth of small ops, taken in a few milliseconds.
MAX_DRAINED_MESSAGES = 500
MAX_DRAINED_OPS = 2000
# Longest a delivery sleeps for the shared rate limit, over all its requests, before handing
# the rest back to the broker: a backlog larger than this many seconds of the limit waits in
# the queue, not in workers that other workspaces' queues need too.
MAX_LIMITER_WAIT = 2
# Longest a deliver task runs before it hands what is left to a new message: a Celery time
# limit must never be what ends a delivery (a hard limit kills the process mid-request). A task
# with a time limit of its own stops at 80% of it.
MAX_DELIVERY_SECONDS = 60


def deliver_message(task: Any, ops: list[Json], failures: int = 0) -> None:
    """The ``deliver`` task: send ``ops`` (``Operation.to_dict()`` output; ``failures`` counts
    earlier attempts) with the messages drained from the queue, and settle each message."""
    own = Message.of(ops, failures)
    came_back = redelivered(task.request)
    drained: list[Message] = []
    try:
        if came_back and too_many_deliveries(task.request.id):
            dead_letters.store([(raw, "worker lost too often", None) for raw in own.ops],
                          own.failures + 1)
            return
        if not came_back:  # back from a lost worker: it goes alone, counted alone
            drained = _drain(one_workspace(own.ops))
        deliver_messages([own, *drained], deadline=time.monotonic() + _time_budget(task))
    except Exception as exc:  # nothing is acknowledged that is not safe
        logger.error("customerio: delivery failed (%s); messages requeued", type(exc).__name__)
        for message in (own, *drained):
            message.error = Reject(type(exc).__name__, requeue=True)
    finally:
        settle(drained)
    if own.error is not None:
        raise own.error


def _drain(workspace: str) -> list[Message]:
    """More messages from the queue of ``workspace``'s own."""
    if backend_class().delivers_inline:
        return []
    try:
        return drain(get_settings(workspace).queue, MAX_DRAINED_MESSAGES, MAX_DRAINED_OPS)
    except Exception as exc:  # the task's own message still goes out
        logger.warning("customerio: cannot drain the queue (%s)", type(exc).__name__)
        return []


def _time_budget(task: Any) -> float:
    """Seconds a delivery may take: MAX_DELIVERY_SECONDS, or less under a Celery time limit
    (the message's own, the task's, or the app's; the soft one when there is one)."""
    hard, soft = task.request.timelimit or (None, None)
    conf = task.app.conf
    limit = (soft or task.soft_time_limit or conf.task_soft_time_limit
             or hard or task.time_limit or conf.task_time_limit)
    return min(MAX_DELIVERY_SECONDS, 0.8 * limit) if limit else MAX_DELIVERY_SECONDS


def deliver_messages(messages: list[Message], deadline: float = float("inf")) -> None:
    """Deliver the ops of several messages together (one Delivery per workspace, API and
    failure count: a request never carries two workspaces' ops)."""
    groups: dict[tuple[str, str, int], tuple[list[Json], list[Message]]] = {}
    for message in messages:
        for (workspace, api), ops in _by_destination(message.ops).items():
            group_ops, group = groups.setdefault((workspace, api, message.failures), ([], []))
            group_ops += ops
            group.append(message)
    for (workspace, api, failures), (ops, group) in groups.items():
        if workspace not in get_settings().workspace_names:  # a hand-made or stale message
            dead_letters.store([(raw, f"unknown workspace {workspace!r}", None) for raw in ops],
                               failures + 1)
            continue
        delivery = DELIVERIES[api](ops, failures, workspace=workspace, deadline=deadline)
        try:
            delivery.run()
        except Exception as exc:
            # A bug, the settings, or the database down (dead letters): try again later like a
            # transient error. A database error's text may quote values: only a settings
            # error's is logged (it names the key, never a credential).
            reason = str(exc) if isinstance(exc, ConfigurationError) else type(exc).__name__
            logger.error("customerio: delivery crashed (%s); retrying", reason)
            logger.debug("customerio: delivery crash (%s) at\n%s", type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)))
            try:
                retry_after_crash(delivery.unsent(), failures, type(exc).__name__)
            except Reject as reject:
                for message in group:
                    message.error = reject


def deliver_inline(ops: list[Json]) -> None:
    """Deliver queued ops now, in this process (for backends that never leave it)."""
    for (workspace, api), raw in _by_destination(ops).items():
        DELIVERIES[api](raw, workspace=workspace).run()


def _by_destination(ops: list[Json]) -> dict[tuple[str, str], list[Json]]:
    """Queued ops by workspace and API (the Track API, or the App API's transactional
    messages), in their order: the Track ops first, so a message renders a fresh profile."""
    groups: dict[tuple[str, str], list[Json]] = {}
    for workspace, raw in by_workspace(ops).items():
        app = set(map(id, messages_among(raw)))
        for api in ("track", "app"):
            mine = [op for op in raw if (id(op) in app) == (api == "app")]
            if mine:
                groups[workspace, api] = mine
    return groups


@dataclass
class Delivery:
    """One message's ops on their way out, and what became of each."""

    api: ClassVar[str] = "track"  # the API this delivery sends to

    raw: list[Json]
    failures: int = 0
    workspace: str = DEFAULT_WORKSPACE  # every op of a delivery goes to this one
    dedup: bool = True  # drop identifies Customer.io already has (backfills may opt out)
    limiter: Any = None  # default: the workspace's shared limiter
    hold_retries: bool = False  # keep retries for the caller (a backfill waits and resends)
    retry: tuple[int, float] | None = None  # held retry: (failure count, seconds to wait)
    throttled_for: float | None = None  # the limiter had no slot for this long
    held: str = "throttled"  # why ops were handed back without a request (no retry counted)
    probing: bool = False  # trying an API marked as not answering (its timeouts count no retry)
    deadline: float = float("inf")  # time.monotonic() by which the rest is handed over
    ops: list[Operation] | None = None  # parsed (or given), as pre_send left them
    results: list[OpResult] = field(default_factory=list)
    pending: list[Operation] = field(default_factory=list)
    error: APIError | None = None
    arrived: set[int] = field(default_factory=set)  # moves whose arrival is queued

    def run(self) -> None:
        config, backend = get_settings(self.workspace), get_backend(self.workspace)
        if self.ops is None:  # a backfill hands over ops it has just built and validated
            self.ops = self.parse()
        pre_send.send(sender=type(backend), ops=self.ops)
        self.send(backend, self.ops, config)
        self.follow_moves(backend)
        if self.pending:
            self.retry_later(config)
        failed = [result for result in self.results if result.status == "failed"]
        dead_letters.store([(r.op.to_dict(), r.reason, r.http_status) for r in failed],
                      self.failures + 1)
        metrics.results(self.results)
        for _, response in post_send.send_robust(sender=type(backend), results=self.results):
            if isinstance(response, Exception):  # delivered is delivered: log, carry on
                logger.error("customerio: a post_send receiver raised %s",
                             type(response).__name__)

    def unsent(self) -> list[Json]:
        """The ops not sent yet, for a retry after a crash (sent ones are not sent again)."""
        if self.ops is None:
            return self.raw
        done = {id(result.op) for result in self.results if result.status in ("sent", "retrying")}
        done -= {id(op) for op in self.ops if isinstance(op, Move) and id(op) not in self.arrived}
        return [op.to_dict() for op in self.ops if id(op) not in done]

    def follow_moves(self, backend: BaseBackend) -> None:
        """Queue the arrival in its new workspace of each person whose move Customer.io took
        (their delete here): after it, so no two workspaces message them at once. A crash
        before that sends the move again (a delete twice is harmless)."""
        moves = [r.op for r in self.results if r.status == "sent" and isinstance(r.op, Move)]
        arrivals = [move.arrival().to_dict() for move in moves]
        if backend.delivers_inline:
            deliver_inline(arrivals)
        else:
            for message in split(arrivals):
                schedule(message, 0, 0)  # on the broker, else in the Outbox; else raises
        self.arrived.update(id(move) for move in moves)

    def parse(self) -> list[Operation]:
        """The ops of the message; a malformed one becomes a dead letter, not a crash loop."""
        ops = []
        for raw in self.raw:
            try:
                op = Operation.from_dict(raw)
            except ValidationError as exc:
                dead_letters.store([(raw, f"malformed: {exc}", None)], self.failures + 1)
                continue
            if op.api != self.api:  # a hand-made message: never to the other API's host
                dead_letters.store([(raw, f"not a {self.api} API operation", None)],
                                   self.failures + 1)
                continue
            if op.workspace is None:  # queued for the default workspace
                op.route_to(self.workspace)
            ops.append(op)
        return ops

    def send(self, backend: BaseBackend, ops: list[Operation], config: CIOSettings) -> None:
        limiter, refusal, silent = None, None, False
        if not backend.delivers_inline:  # what leaves the process: one limit, no repeats
            refusal = credentials.refusal(config)
            if refusal and not credentials.may_probe(config):  # keep them until the key works
                self.error = PermanentError("credentials refused", status=refusal["status"],
                                            kind="operation", count=len(ops))
                self.pending = list(ops)
                return
            silent = outage.not_answering(config)
            if silent and not outage.may_probe(config):  # one worker waits on it, not all
                self.throttled_for, self.held = outage.probe_every(config), "not answering"
                self.pending = list(ops)
                return
            self.probing = silent
            limiter = self.limiter or get_limiter(self.workspace)
            fresh = collapse(ops)
            if self.dedup:
                fresh = dedup.drop_seen(fresh)
            kept = {id(op) for op in fresh}
            self.results += [OpResult(op, "skipped") for op in ops
                             if id(op) not in kept and isinstance(op, Identify)]
            ops = fresh
            if not dedup.move_epochs(ops):  # memory could not forget: what it knows may be stale
                self.throttled_for, self.held = 1.0, "dedup cache unavailable"
                self.pending = list(ops)
                return
            dedup.forget(ops)
        requests = list(pack(ops, batch=config.batch))
        waited = 0.0  # on the limiter, over this delivery's requests
        for number, request in enumerate(requests):
            left = self.deadline - time.monotonic()
            if number and left < config.timeout:  # a request now could outlast the task's time
                self.throttled_for = 0.0
                self.pending = [op for later in requests[number:] for op in later.ops]
                break
            if limiter is not None:
                began = time.monotonic()
                budget = min(MAX_LIMITER_WAIT - waited, left - config.timeout)
                try:
                    limiter.acquire(max_wait=max(0.0, budget))
                except Throttled as throttled:  # our own limit: come back when it has room
                    self.throttled_for = throttled.wait
                    self.pending = [op for later in requests[number:] for op in later.ops]
                    break
                waited += time.monotonic() - began
            try:
                refused = self._post(backend, request.ops, request.batch)
            except PermanentError as exc:
                if exc.status in credentials.REFUSING_STATUSES:  # the key, not these ops
                    credentials.refused(config, exc.status)
                    self.error = exc
                    self.pending = [op for later in requests[number:] for op in later.ops]
                    break
                self.results += [OpResult(op, "failed", exc.reason, exc.status)
                                 for op in request.ops]
                continue
            except ValidationError as exc:
                self.results += [OpResult(op, "failed", f"invalid: {exc}") for op in request.ops]
                continue
            except APIError as exc:  # transient: stop hammering, retry what is left later
                if exc.reason == "timeout" and limiter is not None:
                    outage.timed_out(config)
                self.error = exc
                self.pending = [op for later in requests[number:] for op in later.ops]
                break
            if refusal:  # this delivery's probe got through
                credentials.accepted(config)
                refusal = None
            if silent:
                outage.answered(config)
                silent = False
            bad = {error.index: error for error in refused}
            for index, op in enumerate(request.ops):
                if index in bad:
                    where = f" ({bad[index].field})" if bad[index].field else ""
                    self.results.append(OpResult(op, "failed", bad[index].reason + where, 207))
                else:
                    self.results.append(OpResult(op, "sent"))
            if limiter is not None:  # at once: the longer we wait, the staler it is
                dedup.remember(op for index, op in enumerate(request.ops) if index not in bad)

    @staticmethod
    def _post(backend: BaseBackend, ops: tuple[Operation, ...], batch: bool) -> list[OpError]:
        """One request. Once it is answered, or not, ops that name people by email move
        memory's epoch again: an identify claimed while one was in flight is not trusted."""
        try:
            if batch:
                return backend.send_batch(ops)
            backend.send_one(ops[0])
            return []
        finally:
            if not backend.delivers_inline:
                dedup.move_epochs(ops)

    def retry_later(self, config: CIOSettings) -> None:
        # Each branch marks the ops "retrying" only once they are handed over: a crash before
        # that retries them as unsent.
        error = self.error
        if error is None:  # only our own limiter held them back
            self.hand_over(self.failures, min(self.throttled_for or 0, config.retry_after_max))
            self.results += [OpResult(op, "retrying", self.held) for op in self.pending]
            return
        if isinstance(error, RateLimited):
            # Being told to slow down is not a failure of these ops: keep the retry budget.
            failures = self.failures
            wait = error.retry_after if error.retry_after is not None else backoff(1, config)
            wait = min(wait, config.retry_after_max)
        elif isinstance(error, PermanentError):  # credentials refused: nor is a bad key
            failures, wait = self.failures, credentials.HOLD_FOR
        elif self.probing and error.reason == "timeout":  # nor an API known to be down
            failures, wait = self.failures, outage.probe_every(config)
        else:
            failures = self.failures + 1
            if failures > config.max_retries:
                self.results += [OpResult(op, "failed", error.reason, error.status)
                                 for op in self.pending]
                return
            wait = backoff(failures, config)
        self.hand_over(failures, wait)
        # One line per failed attempt (never per op), so an unreachable Customer.io shows.
        logger.warning("customerio: %d op(s) not sent (%s); retry %d in %.0f s",
                       len(self.pending), error.reason, failures, wait)
        self.results += [OpResult(op, "retrying", error.reason, error.status)
                         for op in self.pending]

    def hand_over(self, failures: int, wait: float) -> None:
        if self.hold_retries:
            self.retry = (failures, wait)
        else:  # same event ids: repeats are dropped
            schedule([op.to_dict() for op in self.pending], failures, wait)


class MessageDelivery(Delivery):
    """Transactional messages on their way to the App API, each at most once (``messages``)."""

    api = "app"

    def send(self, backend: BaseBackend, ops: list[Operation], config: CIOSettings) -> None:
        send_messages(self, backend, ops, config)


DELIVERIES: dict[str, type[Delivery]] = {"track": Delivery, "app": MessageDelivery}
