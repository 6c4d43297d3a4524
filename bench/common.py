"""Measurements the benchmarks share."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


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


def figure(bench: str, name: str, ours: float | None, unit: str, *,
           baseline: float | None = None, ratio: float | None = None,
           target: str = "", met: bool | None = None, note: str = "") -> dict[str, Any]:
    """One headline figure of a benchmark, as ``bench/run.py`` tabulates it.

    ``baseline`` is the official SDK's figure in the same run (same unit), ``ratio`` how many
    times better django-cio did, ``target`` the DESIGN §6 target in words and ``met`` whether
    this run met it (``None``: no target for this figure or size).
    """
    return {"bench": bench, "name": name, "ours": ours, "unit": unit, "baseline": baseline,
            "ratio": ratio, "target": target, "met": met, "note": note}


def emit(figures: list[dict[str, Any]], **extra: Any) -> None:
    """Print the one JSON line ``--json`` asks for (the human report went to stderr)."""
    print(json.dumps({"figures": figures, **extra}), flush=True)


def output(as_json: bool) -> TextIO:
    """Where the human-readable lines go: stdout, or stderr when stdout carries the JSON."""
    return sys.stderr if as_json else sys.stdout
