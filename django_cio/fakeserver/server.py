"""A stand-in Customer.io Track API on a real socket, for the demo, tests and load tests.

    with FakeTrackAPI(latency_ms=50, rate_limit=100) as fake:
        client = TrackClient(fake.site_id, fake.api_key, url=fake.url)
        ...
        assert fake.store.people["42"]["email"] == ...

It speaks v1 and v2, checks Basic auth (401) and body sizes (413), refuses what the real API
would refuse in strict mode (400, or 207 per batch item, naming the field), answers 429 with
Retry-After above its token-bucket rate, and injects latency and errors on demand. Control
and inspection live under ``/_fake/`` (``stats``, ``people``, ``events``, ``requests``,
``config``, ``reset``; ``?site=ID`` for another site than the first) for processes that don't
share its memory. It serves one workspace, or several (``add_site``): the credentials of a
request pick the site, with people, events, faults and limits of its own, and
``GET /api/v1/accounts/region`` answers each site's region and workspace id.

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
from urllib.parse import parse_qs, urlsplit

from ..operations import MAX_BATCH_BYTES, MAX_V2_OP_BYTES, dumps
from .faults import Config
from .protocol import MAX_V1_BYTES, Reply, v1_error
from .site import FakeSite
from .store import Json


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
        status, ops, parsed, raw, site = 500, 0, None, None, None
        try:
            raw = self._read_body(url.path)
            if url.path.startswith("/_fake/"):
                answer = fake.control(self.command, url.path[7:], parse_qs(url.query), raw)
                self._send(200, answer, {})
                return
            parsed = self._json(raw)
            if url.path.startswith("/v1/send/"):  # the App API: Bearer auth
                site = fake.site_for_app_key(self._bearer())
                status, body, ops = fake.app(self.command, url.path, site, parsed)
            else:
                site = fake.site_for(self._credentials())
                status, body, ops = fake.track(self.command, url.path, site, parsed,
                                               parse_qs(url.query))
        except Reply as reply:
            status, body, headers = reply.status, reply.body, reply.headers
        except Exception as exc:  # a bug of the fake's: answer it, don't drop the connection
            status, body = 500, {"meta": {"error": f"fake server error: {type(exc).__name__}"}}
            self.close_connection = True
        store = site.store if site is not None else fake.store
        store.record_request(self.command, url.path, parsed, status, ops, len(raw or b""))
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

    def _credentials(self) -> str | None:
        """``site_id:api_key`` from the Basic auth header, if there is one."""
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            given = base64.b64decode(encoded).decode()
        except ValueError:
            return None
        return given if scheme.lower() == "basic" else None

    def _bearer(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None

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
        region: str = "us",
        environment_id: int = 1,
        **config: Any,
    ) -> None:
        # The first site; its store, faults and counters are the fake's own attributes.
        self.primary = FakeSite(site_id, api_key, region, environment_id, **config)
        self.sites = {site_id: self.primary}
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

    # -- sites ----------------------------------------------------------------------------

    def add_site(self, site_id: str, api_key: str, region: str = "us",
                 environment_id: int | None = None, **config: Any) -> FakeSite:
        """Serve another workspace too, with its own credentials, state and limits."""
        if site_id in self.sites:
            raise ValueError(f"site {site_id!r} is served already")
        environment_id = environment_id or max(s.environment_id for s in self.sites.values()) + 1
        site = self.sites[site_id] = FakeSite(site_id, api_key, region, environment_id, **config)
        return site

    def site_for_app_key(self, key: str | None) -> FakeSite | None:
        """The site whose App API key this is, if any."""
        return next((site for site in self.sites.values() if key and site.app_api_key == key),
                    None)

    def app(self, method: str, path: str, site: FakeSite | None,
            body: Any) -> tuple[int, Json, int]:
        """Answer an App API request for ``site`` (None: an unknown key, a 401)."""
        (site or self.primary).arrived()
        if site is None:
            raise Reply(401, {"meta": {"error": "unauthorized"}})
        return site.app(method, path, body)

    def site_for(self, credentials: str | None) -> FakeSite | None:
        """The site these Basic auth credentials belong to, if any."""
        site_id = (credentials or "").partition(":")[0]
        site = self.sites.get(site_id)
        return site if site is not None and site.credentials == credentials else None

    # The first site's, as the fake's own (most tests serve one site).
    site_id = property(lambda self: self.primary.site_id)
    api_key = property(lambda self: self.primary.api_key)
    app_api_key = property(lambda self: self.primary.app_api_key)
    credentials = property(lambda self: self.primary.credentials)
    store = property(lambda self: self.primary.store)
    faults = property(lambda self: self.primary.faults)
    received = property(lambda self: self.primary.received)

    @property
    def config(self) -> Config:
        return self.primary.config

    def configure(self, **changes: Any) -> None:
        """Change the first site's latency, rate limit, error rate, strictness or failures."""
        self.primary.configure(**changes)

    def fail_next(self, *statuses: int) -> None:
        """Answer the first site's next requests with these statuses (``503, 503``)."""
        self.primary.fail_next(*statuses)

    def track(self, method: str, path: str, site: FakeSite | None, body: Any,
              query: dict[str, list[str]] | None = None) -> tuple[int, Json, int]:
        """Answer a Track API request for ``site`` (None: unknown credentials, a 401)."""
        (site or self.primary).arrived()
        if site is None:
            raise Reply(401, {"meta": {"error": "unauthorized"}})
        return site.track(method, path, body, query or {})

    # -- control and inspection -------------------------------------------------------------

    def control(self, method: str, what: str, query: dict[str, list[str]], raw: bytes) -> Any:
        site_id = query.get("site", [self.site_id])[0]
        if site_id not in self.sites:
            raise Reply(404, {"error": "unknown site"})
        site = self.sites[site_id]
        store = site.store
        if method == "GET" and what == "stats":
            return store.stats()
        if method == "GET" and what == "people":
            with store.lock:
                return dict(store.people)
        if method == "GET" and what == "messages":
            with store.lock:
                return list(store.messages)
        if method == "GET" and what == "objects":
            with store.lock:
                return {"objects": {f"{t}:{i}": attrs for (t, i), attrs in store.objects.items()},
                        "relationships": [
                            {"person": person, "object": f"{t}:{i}", "attributes": attrs}
                            for (person, t, i), attrs in store.relationships.items()],
                        "segments": {str(n): sorted(people)
                                     for n, people in store.segments.items()}}
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
                site.configure(**json.loads(raw or b"{}"))
            except (ValueError, TypeError) as exc:
                raise Reply(400, {"error": str(exc)}) from None
            return asdict(site.config)
        if method == "POST" and what == "reset":
            store.reset()
            return {}
        raise Reply(404, {"error": "unknown control endpoint"})
