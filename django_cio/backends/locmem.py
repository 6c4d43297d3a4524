from __future__ import annotations

from collections.abc import Sequence

from ..operations import Operation
from .base import BaseBackend

# Ops recorded by the locmem backend, like ``django.core.mail.outbox`` (``django_cio.outbox``).
outbox: list[Operation] = []


class LocMemBackend(BaseBackend):
    """Records ops in ``django_cio.outbox`` instead of sending them, for tests."""

    delivers_inline = True

    def handle(self, ops: Sequence[Operation]) -> None:
        outbox.extend(ops)
