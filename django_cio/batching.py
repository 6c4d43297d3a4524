"""Fewer, fuller requests: ops packed into v2 batches, and messages coalesced in a worker."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .operations import MAX_BATCH_BYTES, Json, Operation

_ENVELOPE_BYTES = len(b'{"batch":[]}')


@dataclass(frozen=True)
class Request:
    """The ops of one HTTP request: a v2 batch, or a single op sent with v1."""

    ops: tuple[Operation, ...]
    batch: bool


def pack(ops: Sequence[Operation], batch: bool = True) -> Iterator[Request]:
    """Requests carrying ``ops`` in their order: v2 batches of up to 500 KB where ``batch`` is
    set and the op fits v2; anonymous events and items over 32 KB go alone, with v1."""
    group: list[Operation] = []
    size = _ENVELOPE_BYTES
    for op in ops:
        if not (batch and op.fits_v2()):
            if group:  # keep the order: an identify must land before the event that needs it
                yield Request(tuple(group), batch=True)
                group, size = [], _ENVELOPE_BYTES
            yield Request((op,), batch=False)
            continue
        op_size = len(op.v2_bytes) + (1 if group else 0)  # and a comma after the first
        if group and size + op_size > MAX_BATCH_BYTES:
            yield Request(tuple(group), batch=True)
            group, size, op_size = [], _ENVELOPE_BYTES, len(op.v2_bytes)
        group.append(op)
        size += op_size
    if group:
        yield Request(tuple(group), batch=True)


@dataclass(eq=False)
class Message:
    """One queued ``deliver`` message waiting in a ``Coalescer``."""

    ops: list[Json]
    failures: int = 0
    error: BaseException | None = None  # raised in the message's own task thread
    done: bool = False
    leads: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


class Coalescer:
    """Lets the messages that one worker process runs at once share requests.

    With a thread pool (``celery worker -P threads -c 64``) many ``deliver`` tasks run at
    once. Up to ``max_senders`` of them lead: a leader first waits for its rate-limit slot
    (``take_slot``), and only then takes every message waiting (up to ``max_ops`` ops) and
    delivers them together. So the busier the limit, the longer the wait and the fuller the
    request, with no fixed linger when the limit has room. The other tasks wait until their
    message is delivered (or dead-lettered, or handed to a retry message) and only then return,
    so Celery acknowledges each message after its ops are safe (``acks_late``). A leader leads
    once, then passes the lead to the oldest waiting message, so no task's message stays
    unacknowledged for long. With one task per process (prefork, solo) each message is simply
    delivered alone.
    """

    def __init__(
        self,
        deliver: Callable[[list[Message], float | None], None],
        take_slot: Callable[[], float | None],
        max_senders: int = 8,
        max_ops: int = 2000,
    ) -> None:
        self.deliver, self.take_slot = deliver, take_slot
        self.max_senders, self.max_ops = max_senders, max_ops
        self._lock = threading.Lock()
        self._waiting: deque[Message] = deque()
        self._senders = 0

    def submit(self, message: Message) -> None:
        """Deliver ``message`` with whatever else is waiting; raise its error, if any."""
        with self._lock:
            self._waiting.append(message)
            if self._senders < self.max_senders:
                self._senders += 1
                message.leads = True
        while not message.done:
            if message.leads:
                self._lead(message)
            else:
                message.wake.wait()
                message.wake.clear()
        if message.leads:  # handed the lead, but delivered by another leader meanwhile
            self._lead(message)
        if message.error is not None:
            raise message.error

    def _lead(self, leader: Message) -> None:
        leader.leads = False
        batch: list[Message] = []
        try:
            with self._lock:
                waiting = bool(self._waiting)
            if waiting:
                throttled_for = self.take_slot()  # messages keep arriving meanwhile
                batch = self._take()
                self.deliver(batch, throttled_for)
        finally:
            for message in batch:
                message.done = True
                message.wake.set()
            with self._lock:  # pass the lead to the oldest waiting message not leading yet
                heir = next((message for message in self._waiting if not message.leads), None)
                if heir is not None:
                    heir.leads = True
                    heir.wake.set()
                else:
                    self._senders -= 1

    def _take(self) -> list[Message]:
        with self._lock:
            batch: list[Message] = []
            count = 0
            while self._waiting and (not batch or count + len(self._waiting[0].ops)
                                     <= self.max_ops):
                message = self._waiting.popleft()
                batch.append(message)
                count += len(message.ops)
            return batch
