"""Measurements the benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable


def serial_rate(send: Callable[[int], object], seconds: float) -> float:
    """Calls per second of ``send(n)``, one after another, for ``seconds``."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        send(count)
        count += 1
    return count / (time.perf_counter() - started)


def busiest_second(times: list[float]) -> int:
    """The most events inside any sliding 1-second window (``times`` sorted)."""
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most
