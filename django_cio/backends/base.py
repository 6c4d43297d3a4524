from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ..client import OpError, encode_batch
from ..conf import CIOSettings
from ..operations import Operation, SendMessage


class BaseBackend:
    """Sends ops in one request: ``send_one`` (v1, one op) or ``send_batch`` (v2, many).

    Both raise ``APIError`` subclasses when the whole request fails; ``send_batch`` returns the
    ops Customer.io refused one by one. ``send_message`` sends a transactional message to the
    App API and returns Customer.io's ``delivery_id`` (``None`` where nothing was sent).
    Backends that never leave the process only implement ``handle``.
    """

    # True for backends that never leave the process (locmem, console, null): they run at
    # commit, in the caller, with no broker or worker, so tests see ``django_cio.outbox``
    # filled as soon as the transaction commits. Anything that does I/O runs in workers.
    delivers_inline: ClassVar[bool] = False

    def __init__(self, config: CIOSettings) -> None:
        self.settings = config

    def send_one(self, op: Operation) -> None:
        self.handle([op])

    def send_batch(self, ops: Sequence[Operation]) -> list[OpError]:
        encode_batch(ops)  # refuse what the HTTP backend would refuse, so tests see it too
        self.handle(ops)
        return []

    def send_message(self, op: SendMessage) -> str | None:
        self.handle([op])
        return None

    def handle(self, ops: Sequence[Operation]) -> None:
        raise NotImplementedError
