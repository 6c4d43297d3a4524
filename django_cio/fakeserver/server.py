"""A stand-in Customer.io Track API on a real socket, for the demo, tests and load tests.

    with FakeTrackAPI(latency_ms=50, rate_limit=100) as fake:
        client = TrackClient(fake.site_id, fake.api_key, url=fake.url)
        ...
        assert fake.store.people["42"]["email"] == ...

It speaks v1 and v2, checks Basic auth (401) and body sizes (413), refuses what the real API
would refuse in strict mode (400, or 207 per batch item, naming the field), answers 429 with
Retry-After above its token-bucket rate, and injects latency and errors on demand. Control
and inspection live under ``/_fake/`` (``stats``, ``people``, ``events``, ``requests``,
``config``, ``reset``) for processes that don't share its memory.

Built on the standard library's threading HTTP server with TCP_NODELAY and keep-alive: about
3,000+ small requests/s on two cores (``bench/fakeserver.py``), no extra dependency.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..operations import MAX_BATCH_BYTES, MAX_V2_OP_BYTES, dumps
from .faults import Config, Faults
from .protocol import MAX_V1_BYTES, Reply, from_v1, v1_error
from .store import Invalid, Json, Store, check


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Customer.io and the SDK's pool expect
    disable_nagle_algorithm = True  # TCP_NODELAY: ~15x more small requests per second
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: it is a test double
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        body: Json = {}
        headers: dict[str, str] = {}
        status, ops, parsed, raw = 500, 0, None, None
        try:
            raw = self._read_body(url.path)
            if url.path.startswith("/_fake/"):
                answer = fake.control(self.command, url.path[7:], parse_qs(url.query), raw)
                self._send(200, answer, {})
                return
            parsed = self._json(raw)
            status, body, ops = fake.track(self.command, url.path, self._authorized(), parsed)
        except Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        except Exception as exc:  # a bug of the fake's: answer it, don't drop the connection
            status, body = 500, {"meta": {"error": f"fake server error: {type(exc).__name__}"}}
            self.close_connection = True
        fake.store.record_request(self.command, url.path, parsed, status, ops, len(raw or b""))
        self._send(status, body, headers)

    def _read_body(self, path: str) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise Reply(400, {"meta": {"error": "bad Content-Length"}})
        cap = MAX_BATCH_BYTES if path == "/api/v2/batch" else (
            MAX_V2_OP_BYTES if path == "/api/v2/entity" else MAX_V1_BYTES)
        if length > cap and not path.startswith("/_fake/"):
            self.close_connection = True  # the body stays unread
            raise Reply(413, {"meta": {"error": f"body larger than {cap} bytes"}})
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise v1_error("body is not valid JSON") from None

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            given = base64.b64decode(encoded).decode()
        except ValueError:
            return False
        return scheme.lower() == "basic" and given == self.server.fake.credentials

    def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
        payload = dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeTrackAPI
    connections: set[socket.socket]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # not a client that went away
            super().handle_error(request, client_address)


class FakeTrackAPI:
    """The fake server. A context manager: starts on enter (port 0 picks a free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        site_id: str = "fake-site-id",
        api_key: str = "fake-api-key",
        **config: Any,
    ) -> None:
        self.site_id, self.api_key = site_id, api_key
        self.credentials = f"{site_id}:{api_key}"
        self.faults = Faults(**config)
        self.store = Store()
        self._lock = threading.Lock()
        self.received = 0  # Track API requests that arrived, answered or not
        self._httpd = _Server((host, port), Handler)
        self._httpd.fake = self
        self._httpd.connections = set()
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __repr__(self) -> str:
        return f"<FakeTrackAPI {self.url}>"

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> FakeTrackAPI:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-track-api",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        if self._serving:  # shutdown() would wait forever for a loop that never ran
            self._httpd.shutdown()
            self._serving = False
        # Keep-alive connections would keep their handler threads alive: end them too.
        for connection in list(self._httpd.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2
        while self._httpd.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeTrackAPI:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- behaviour --------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.faults.config

    def configure(self, **changes: Any) -> None:
        """Change latency, rate limit, error rate, strictness or queued failures at run time."""
        self.faults.configure(**changes)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (``503, 503``; ``0, 429``: the second)."""
        self.faults.fail_next(*statuses)

    def track(self, method: str, path: str, authorized: bool, body: Any) -> tuple[int, Json, int]:
        """Answer a Track API request: (status, body, ops applied)."""
        with self._lock:
            self.received += 1  # counted on arrival: tests can catch a client mid-request
        if self.config.latency_ms:
            time.sleep(self.config.latency_ms / 1000)
        if not authorized:
            raise Reply(401, {"meta": {"error": "unauthorized"}})
        self.faults.gate()
        if method == "POST" and path == "/api/v2/batch":
            return self._batch(body)
        if method == "POST" and path == "/api/v2/entity":
            return self._entity(body)
        if path.startswith("/api/v1/"):
            parts = [unquote(part) for part in path[len("/api/v1/"):].split("/")]
            op = from_v1(method, parts, body)
            self._check(op, v1_error)
            self.store.apply(op)
            return 200, {}, 1
        raise Reply(404, {"meta": {"error": "not found"}})

    def _check(self, op: Json, error: Any) -> None:
        if self.config.strict:
            try:
                check(op)
            except Invalid as invalid:
                raise error(f"{invalid.field}: {invalid.message}") from None

    def _entity(self, op: Any) -> tuple[int, Json, int]:
        def refuse(message: str) -> Reply:
            return Reply(400, {"errors": [{"reason": "invalid", "message": message}]})

        if not isinstance(op, dict):
            raise refuse("body must be an object")
        self._check(op, refuse)
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
                    check(op)
                identifiers = op.get("identifiers")
                if isinstance(identifiers, dict) and identifiers.get("id") in self.config.refuse:
                    raise Invalid("identifiers.id", "refused (fake server refuse list)")
                self.store.apply(op)
            except Invalid as invalid:
                errors.append({"batch_index": index, "reason": "invalid",
                               "field": invalid.field, "message": invalid.message})
        return (207, {"errors": errors}, len(ops)) if errors else (200, {}, len(ops))

    # -- control and inspection -------------------------------------------------------------

    def control(self, method: str, what: str, query: dict[str, list[str]], raw: bytes) -> Any:
        store = self.store
        if method == "GET" and what == "stats":
            return store.stats()
        if method == "GET" and what == "people":
            with store.lock:
                return dict(store.people)
        if method == "GET" and what == "events":
            person = query.get("person", [None])[0]
            with store.lock:
                return [e for e in store.events if person is None or e["person"] == person]
        if method == "GET" and what == "requests":
            try:
                limit = max(0, int(query.get("limit", ["1000"])[0]))
            except ValueError:
                raise Reply(400, {"error": "limit must be an integer"}) from None
            with store.lock:
                return list(store.requests)[len(store.requests) - limit:] if limit else []
        if method == "POST" and what == "config":
            try:
                self.configure(**json.loads(raw or b"{}"))
            except (ValueError, TypeError) as exc:
                raise Reply(400, {"error": str(exc)}) from None
            return asdict(self.config)
        if method == "POST" and what == "reset":
            store.reset()
            return {}
        raise Reply(404, {"error": "unknown control endpoint"})
