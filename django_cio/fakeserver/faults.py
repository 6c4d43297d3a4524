"""What the fake injects before it looks at a request: queued failures, random 503s and a
token-bucket rate cap answering 429 with Retry-After, all switchable at run time."""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .protocol import Reply


@dataclass
class Config:
    """Behaviour switchable at run time (``FakeTrackAPI.configure`` or ``POST /_fake/config``)."""

    latency_ms: float = 0
    rate_limit: float | None = None  # requests per second; None = no cap
    error_rate: float = 0.0  # share of requests answered 503
    strict: bool = True
    # Strict mode also applies Customer.io's request schemas (spec.py): about 0.1 ms an op,
    # which the benchmarks and the load test, after throughput, leave out.
    schemas: bool = True
    retry_after: float | None = 1  # seconds sent with 429s; None sends no header
    fail_next: list[int] = field(default_factory=list)  # statuses for the next requests
    refuse: list[str] = field(default_factory=list)  # person ids whose batch items get a 207
    # The workspace identifies people by email or id, so a v1 path holding an email-shaped
    # value means an email, as Customer.io reads it.
    email_identifiers: bool = True
    # The workspace's transactional messages (ids and trigger names); None takes any. A send
    # from another is refused as Customer.io refuses a message id it does not have.
    transactional_messages: list[int | str] | None = None


class TokenBucket:
    """``rate`` requests per second with a burst of one second's worth (at least one)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(rate, 1.0)
        self.tokens, self.updated = self.capacity, time.monotonic()

    def take(self) -> float:
        """0 if a request may pass now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Faults:
    """The run-time ``Config`` and the rate cap's bucket, behind one lock."""

    def __init__(self, **config: Any) -> None:
        self.config = Config(**config)
        self.lock = threading.Lock()
        self.bucket = TokenBucket(self.config.rate_limit) if self.config.rate_limit else None

    def configure(self, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                if not hasattr(self.config, name):
                    known = ", ".join(asdict(self.config))
                    raise ValueError(f"unknown fake server setting {name!r}; known: {known}")
                setattr(self.config, name, value)
            if "rate_limit" in changes:
                rate = self.config.rate_limit
                self.bucket = TokenBucket(rate) if rate else None

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.config.fail_next.extend(statuses)

    def gate(self) -> None:
        """Injected failures and the rate cap, before a request is looked at."""
        with self.lock:
            config = self.config
            # 0 in fail_next lets that request through, to fail a later one.
            status = (config.fail_next.pop(0) or None) if config.fail_next else None
            retry_after = config.retry_after
            if status is None and config.error_rate and random.random() < config.error_rate:
                status = 503
            if status is None and self.bucket is not None:
                wait = self.bucket.take()
                if wait:
                    status, retry_after = 429, wait
        if status == 429:
            # Retry-After is whole seconds: round up so a client that obeys it gets through.
            headers = {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
            raise Reply(429, {"meta": {"error": "rate limited"}}, headers)
        if status is not None:
            raise Reply(status, {"meta": {"error": "injected failure"}})
