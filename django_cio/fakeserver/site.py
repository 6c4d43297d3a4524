"""One Customer.io workspace inside the fake: its credentials and region, what it holds
(``Store``) and how it misbehaves (``Faults``). A fake serves one site, or several
(``FakeTrackAPI.add_site``), each with state and limits of its own, as workspaces have."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import unquote

from ..conf import REGION_URLS
from ..operations import MAX_V2_OP_BYTES, dumps
from . import app, spec
from .faults import Config, Faults
from .protocol import Reply, from_v1, v1_error
from .store import Invalid, Json, Store, check


class FakeSite:
    """A workspace: Basic auth ``site_id:api_key``, a region, a store and its faults."""

    def __init__(self, site_id: str, api_key: str, region: str = "us",
                 environment_id: int = 1, app_api_key: str | None = None,
                 **config: Any) -> None:
        if region not in REGION_URLS:
            raise ValueError(f"region must be one of {sorted(REGION_URLS)}")
        self.site_id, self.api_key = site_id, api_key
        self.credentials = f"{site_id}:{api_key}"
        # The App API's Bearer key (transactional messages): its own, as Customer.io's are.
        self.app_api_key = app_api_key or f"{api_key}-app"
        self.region, self.environment_id = region, environment_id
        self.faults = Faults(**config)
        self.store = Store()
        self._lock = threading.Lock()
        self.received = 0  # Track API requests that arrived, answered or not

    def __repr__(self) -> str:
        return f"<FakeSite {self.site_id!r} ({self.region})>"

    @property
    def config(self) -> Config:
        return self.faults.config

    def configure(self, **changes: Any) -> None:
        """Change latency, rate limit, error rate, strictness or queued failures at run time."""
        self.faults.configure(**changes)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (``503, 503``; ``0, 429``: the second)."""
        self.faults.fail_next(*statuses)

    def arrived(self) -> None:
        with self._lock:
            self.received += 1  # counted on arrival: tests can catch a client mid-request
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000)

    def track(self, method: str, path: str, body: Any,
              query: dict[str, list[str]] | None = None) -> tuple[int, Json, int]:
        """Answer an authorized Track API request: (status, body, ops applied)."""
        self.faults.gate()
        if method == "POST" and path == "/api/v2/batch":
            return self._batch(body)
        if method == "POST" and path == "/api/v2/entity":
            return self._entity(body)
        if method == "GET" and path == "/api/v1/accounts/region":
            return 200, {"url": REGION_URLS[self.region], "region": self.region,
                         "environment_id": self.environment_id}, 0
        if path.startswith("/api/v1/"):
            if self._schemas():
                for field, message in spec.v1_problems(method, path, body)[:1]:
                    raise v1_error(f"{field}: {message}")
            parts = [unquote(part) for part in path[len("/api/v1/"):].split("/")]
            op = from_v1(method, parts, body, self.config.email_identifiers, query or {})
            self._check(op, v1_error)
            self.store.apply(op)
            return 200, {}, 1
        raise Reply(404, {"meta": {"error": "not found"}})

    def app(self, method: str, path: str, body: Any) -> tuple[int, Json, int]:
        """Answer an authorized App API send: ``POST /v1/send/<channel>``."""
        self.faults.gate()
        channel = path.removeprefix("/v1/send/")
        if method != "POST" or channel not in app.CHANNELS:
            raise Reply(404, {"meta": {"error": "not found"}})
        if self.config.strict:
            app.check_message(channel, body, self.config.transactional_messages)
        with self.store.lock:
            return 200, app.accept(self.store.messages, channel, body), 1

    def _schemas(self) -> bool:
        return self.config.strict and self.config.schemas

    def _check(self, op: Json, error: Any, v2: bool = False) -> None:
        if self.config.strict:
            try:
                self._check_item(op, v2)
            except Invalid as invalid:
                raise error(f"{invalid.field}: {invalid.message}") from None

    def _check_item(self, op: Json, v2: bool) -> None:
        """What Customer.io checks of a v2 item (or a v1 request as its v2 item): its schema
        (``v2``), then sizes and values."""
        if v2 and self._schemas():
            for field, message in spec.v2_problems(op)[:1]:
                raise Invalid(field, message)
        check(op)

    def _entity(self, op: Any) -> tuple[int, Json, int]:
        def refuse(message: str) -> Reply:
            return Reply(400, {"errors": [{"reason": "invalid", "message": message}]})

        if not isinstance(op, dict):
            raise refuse("body must be an object")
        self._check(op, refuse, v2=True)
        self.store.apply(op)
        return 200, {}, 1

    def _batch(self, body: Any) -> tuple[int, Json, int]:
        ops = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(ops, list) or not ops:
            raise Reply(400, {"errors": [{"reason": "invalid", "field": "batch",
                                          "message": "batch must be a non-empty list"}]})
        errors = []
        for index, op in enumerate(ops):
            try:
                if not isinstance(op, dict):
                    raise Invalid("batch", "must be an object")
                if len(dumps(op)) > MAX_V2_OP_BYTES:
                    raise Invalid("batch", f"operation larger than {MAX_V2_OP_BYTES} bytes")
                if self.config.strict:
                    self._check_item(op, v2=True)
                identifiers = op.get("identifiers")
                if isinstance(identifiers, dict) and identifiers.get("id") in self.config.refuse:
                    raise Invalid("identifiers.id", "refused (fake server refuse list)")
                self.store.apply(op)
            except Invalid as invalid:
                errors.append({"batch_index": index, "reason": "invalid",
                               "field": invalid.field, "message": invalid.message})
        return (207, {"errors": errors}, len(ops)) if errors else (200, {}, len(ops))
