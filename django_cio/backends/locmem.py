from __future__ import annotations

from collections.abc import Sequence

import django_cio

from ..operations import Operation
from .base import BaseBackend


class LocMemBackend(BaseBackend):
    """Records ops in ``django_cio.outbox`` instead of sending them, for tests."""

    delivers_inline = True

    def handle(self, ops: Sequence[Operation]) -> None:
        django_cio.outbox.extend(ops)
