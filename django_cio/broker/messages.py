"""``deliver`` messages as the broker holds them: the task's own or drained ones, whether one
came back from a lost worker, and what a drain has taken so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..operations import Json

# Above any MAX_RETRIES, and below what DeadLetter.attempts (a 32-bit column) holds.
MAX_FAILURES = 2**31 - 2


@dataclass(eq=False)
class Message:
    """A ``deliver`` message: the task's own, or one drained straight from the queue."""

    ops: list[Json]
    failures: int = 0
    error: BaseException | None = None  # set when its ops must go back to the broker
    queued: Any = None  # the kombu message, for drained ones (to acknowledge it)
    queue: str | None = None  # the queue a drained one came from (to hand it back there)

    @classmethod
    def of(cls, ops: Any, failures: Any, queued: Any = None) -> Message:
        """A message from a task's arguments, however malformed (each bad op becomes a dead
        letter later; a bad failure count counts as none)."""
        if not isinstance(ops, list):
            ops = [ops]
        if (not isinstance(failures, int) or isinstance(failures, bool)
                or not 0 <= failures < MAX_FAILURES):
            failures = 0
        return cls(ops, failures, queued=queued)


# The header marking a copy of a redelivered message that a drain handed back: ``deliver``
# still runs it alone and counts it toward its poison limit (see ``redelivered``).
REDELIVERED_HEADER = "cio_redelivered"
# Messages a drain takes in its first step, before it knows their size in ops.
FIRST_TAKE = 10


def redelivered(request: Any) -> bool:
    """Whether a task's message came back from a lost worker: redelivered by the broker, or
    a copy a drain handed back (RabbitMQ cannot mark a published copy redelivered)."""
    info = getattr(request, "delivery_info", None) or {}
    return bool(info.get("redelivered") or getattr(request, REDELIVERED_HEADER, False))


def came_back(queued: Any) -> bool:
    """Whether a kombu message is back from a lost worker (``redelivered`` for kombu's)."""
    return bool((queued.delivery_info or {}).get("redelivered")
                or (queued.headers or {}).get(REDELIVERED_HEADER))


def as_message(queued: Any) -> Message | None:
    """The ``deliver`` message in a Celery (protocol 2) message, unless it must wait."""
    headers = queued.headers or {}
    if headers.get("task") != "django_cio.tasks.deliver" or headers.get("eta"):
        return None
    try:
        (ops, *_), kwargs, _ = queued.decode()
    except Exception:  # not JSON, not protocol 2: Celery's own handling deals with it
        return None
    failures = kwargs.get("failures", 0) if isinstance(kwargs, dict) else 0
    return Message.of(ops, failures, queued)


@dataclass
class Taking:
    """What a drain has taken so far, and how much more fits."""

    bound: Any
    max_messages: int
    max_ops: int
    messages: list[Message] = field(default_factory=list)
    ops: int = 0

    def full(self) -> bool:
        return len(self.messages) >= self.max_messages or self.ops >= self.max_ops

    def next_take(self) -> int:
        """How many to take next: as many as the ops seen so far say will fit."""
        room = self.max_messages - len(self.messages)
        if not self.messages:
            return min(room, FIRST_TAKE)
        per_message = -(-self.ops // len(self.messages))
        return max(1, min(room, (self.max_ops - self.ops) // max(per_message, 1)))

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self.ops += len(message.ops)
