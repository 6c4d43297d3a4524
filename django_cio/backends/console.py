from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence

from ..operations import Operation
from .base import BaseBackend


class ConsoleBackend(BaseBackend):
    """Prints each op to stdout, redacted: kind, person hash and field names, no values."""

    delivers_inline = True

    _lock = threading.Lock()

    def handle(self, ops: Sequence[Operation]) -> None:
        lines = "".join(json.dumps(op.redacted()) + "\n" for op in ops)
        with self._lock:
            sys.stdout.write(lines)
            sys.stdout.flush()
