from __future__ import annotations

from collections.abc import Sequence

from ..operations import Operation
from .base import BaseBackend


class NullBackend(BaseBackend):
    """Drops every op."""

    delivers_inline = True

    def handle(self, ops: Sequence[Operation]) -> None:
        pass
