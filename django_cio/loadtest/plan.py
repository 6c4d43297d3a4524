"""The options of a run, checked before anything starts; what views use to name persons."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HEADER = "X-CIO-Loadtest-Person"
PREFIX = "loadtest-"  # every run's persons start with it; the run adds its own id
DEFAULT_STAGES = "10:20,50:30,80:30,10:20"  # requests/s : seconds, about 2 minutes with setup
EXAMPLE_FIRST = "POST /loadtest/signup/ 1"  # the example project's load-test views
EXAMPLE_PATHS = ("POST /loadtest/order/ 1",)
WARM_UP_EVENT = "cio_loadtest_warm_up"
LIMITS = {"p95_ms": 500.0, "p99_ms": 2000.0, "errors": 50.0}


class UsageError(ValueError):
    """A bad option; the message names it and fits on one line."""


def loadtest_person(request: Any) -> str | None:
    """The person id a ``cio_loadtest`` visitor sent, or ``None`` if the request is not one.

    Only ids with the load-test prefix are returned, so a view that uses this can only ever
    make people that ``--cleanup`` (or a prefix search in Customer.io) finds again."""
    person = request.headers.get(HEADER, "")
    return person if person.startswith(PREFIX) and len(person.encode()) <= 150 else None


@dataclass(frozen=True)
class Stage:
    rate: int  # requests per second (a simulated visitor makes one a second, on average)
    seconds: float


@dataclass(frozen=True)
class PathSpec:
    method: str
    path: str
    events: int  # events a successful request makes for the visitor's person

    @classmethod
    def parse(cls, text: str) -> PathSpec:
        """``"[METHOD] PATH [EVENTS]"``, e.g. ``"POST /orders/ 1"`` or ``"/pricing/"``."""
        words = text.split()
        method = words.pop(0).upper() if words and not words[0].startswith("/") else "GET"
        events = words.pop() if len(words) == 2 else "0"
        if len(words) != 1 or not words[0].startswith("/") or not events.isdigit():
            raise UsageError(f"--path {text!r}: expected '[METHOD] /path [EVENTS]'")
        return cls(method, words[0], int(events))

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def parse_stages(text: str) -> list[Stage]:
    """``"10:20,50:30"``: 10 requests/s for 20 s, then 50/s for 30 s."""
    stages = []
    for part in text.split(","):
        rate, _, seconds = part.strip().partition(":")
        try:
            stage = Stage(int(rate), float(seconds))
        except ValueError:
            raise UsageError(f"--stages {text!r}: expected RATE:SECONDS,...") from None
        if stage.rate < 1 or not 0 < stage.seconds <= 3600:
            raise UsageError(f"--stages {text!r}: rates >= 1, seconds in (0, 3600]")
        stages.append(stage)
    return stages


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_track_url(url: str, allow_real: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--track-url {url!r}: expected http(s)://host[:port]")
    real = parts.hostname == "customer.io" or parts.hostname.endswith(".customer.io")
    if (real or not is_loopback(url)) and not allow_real:
        raise UsageError(f"--track-url {url}: not a Track API on this machine; a load test "
                         "would create persons there. Pass --allow-real-customerio if you mean it")


def check_installed(*modules: str) -> None:
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"{' and '.join(missing)} not installed: "
                         "pip install 'django-cio[loadtest]'")


@dataclass
class Plan:
    stages: list[Stage]
    paths: list[PathSpec]
    first: PathSpec | None = None
    host: str | None = None  # the app's URL; None: gunicorn serves this project
    web_workers: int = 2
    workers: int = 2  # Celery worker processes started; 0: the project's own workers deliver
    celery_app: str = ""
    track_url: str | None = None  # None: the bundled fake server
    workspace: str = "default"  # where the load test's people and events go
    fake_latency_ms: float = 50
    fake_rate_limit: float | None = 100
    drain_timeout: float = 60
    cleanup: bool = False
    out: Path = Path("cio-loadtest")
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS))
    prefix: str = field(default_factory=lambda: f"{PREFIX}{uuid.uuid4().hex[:6]}-")

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)
