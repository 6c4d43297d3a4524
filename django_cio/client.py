"""A synchronous Track API client: one HTTP request per call, answers classified.

Used by the HTTP backend inside workers and usable on its own in scripts::

    client = TrackClient(site_id, api_key, region="eu")
    client.identify("42", email="ada@example.com")
    failed = client.send_batch([Identify("42", {...}), Event("42", "signed_up")])

Each thread of each process gets its own pooled keep-alive ``requests.Session``, created on
first use; a process forked after that (gunicorn ``preload_app``, Celery prefork) never
reuses its parent's sockets. Errors carry the HTTP status, the op kind and the op count, and
never the URL, the body or the credentials: person ids and attributes are PII.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from . import metrics
from ._version import __version__
from .conf import APP_REGION_URLS, REGION_URLS, CIOSettings, is_http_url
from .exceptions import (
    ConfigurationError,
    PermanentError,
    RateLimited,
    TransientError,
    ValidationError,
)
from .operations import (
    MAX_BATCH_BYTES,
    MAX_V2_OP_BYTES,
    AddDevice,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    Event,
    Identify,
    Merge,
    Operation,
    Page,
    SendMessage,
    Suppress,
    Unsuppress,
    dumps,
)

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("django_cio.requests")


_REASONS = {
    400: "bad request",
    403: "forbidden",
    404: "not found",
    408: "request timeout",
    413: "request too large",
}


def encode_batch(ops: Sequence[Operation]) -> bytes:
    """The ``/api/v2/batch`` body for ``ops``; ``ValidationError`` if v2 can't carry them."""
    for index, op in enumerate(ops):
        if not op.batchable:
            raise ValidationError("batch", f"batch[{index}]", f"({op.kind}) has no v2 form")
        size = len(op.v2_bytes)
        if size > MAX_V2_OP_BYTES:
            raise ValidationError(
                "batch", f"batch[{index}]",
                f"({op.kind}) is {size} bytes; the limit is {MAX_V2_OP_BYTES}",
                f"{MAX_V2_OP_BYTES} bytes",
            )
    body = b'{"batch":[' + b",".join(op.v2_bytes for op in ops) + b"]}"
    if len(body) > MAX_BATCH_BYTES:
        raise ValidationError(
            "batch", "batch", f"is {len(body)} bytes; the limit is {MAX_BATCH_BYTES}",
            f"{MAX_BATCH_BYTES} bytes",
        )
    return body


@dataclass(frozen=True)
class OpError:
    """One op of a v2 batch that Customer.io refused (HTTP 207). Permanent for this content.

    ``reason`` and ``field`` come from the API; its free-text ``message`` is not kept because
    it may quote the refused value.
    """

    index: int
    op: Operation
    reason: str
    field: str | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), or ``None``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: a short chain (requests wraps urllib3, which wraps the
    socket's error)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        yield seen
        wrapped = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = seen.__cause__ or wrapped or seen.__context__


def _refused(exc: BaseException) -> bool:
    """Whether a requests error comes from a connection never made (nothing was sent)."""
    return any(isinstance(seen, urllib3.exceptions.NewConnectionError) for seen in _causes(exc))


def _timed_out(exc: BaseException) -> bool:
    """Whether a requests error comes from a timeout somewhere in its causes."""
    for seen in _causes(exc):
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            return False  # refused (urllib3 files it under its connect timeouts)
        if isinstance(seen, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return True
    return False


class TrackClient:
    """Customer.io Track API over HTTP Basic auth (``site_id:api_key``)."""

    # The settings an error points at: a 401's credentials, a redirect's address.
    _key_settings = "SITE_ID and API_KEY"
    _url_setting = "TRACK_URL"

    def __init__(
        self,
        site_id: str,
        api_key: str,
        region: str = "us",
        url: str | None = None,
        timeout: float = 10,
        session: requests.Session | None = None,
        pool_size: int = 10,
        workspace: str = "default",
    ) -> None:
        if url is None and region not in REGION_URLS:
            raise ConfigurationError(f"region must be one of {sorted(REGION_URLS)}")
        if url is not None and not is_http_url(url):
            raise ConfigurationError("url must be an http:// or https:// URL")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError("timeout must be a number of seconds above 0")
        if not (str(site_id).isascii() and str(api_key).isascii()):
            # Else requests fails encoding the header with an error that holds the whole key.
            raise ConfigurationError("site_id and api_key must be ASCII (a stray quote?)")
        self.base_url = url.rstrip("/") if url else REGION_URLS[region]
        self.timeout = timeout
        self.workspace = workspace  # the name its metrics carry
        self._auth: tuple[str, str] | None = (str(site_id), str(api_key))
        self._headers: dict[str, str] = {}
        self._given_session = session
        self._pool_size = pool_size
        self._local = threading.local()

    @classmethod
    def from_settings(cls, config: CIOSettings) -> TrackClient:
        return cls(config.site_id or "", config.api_key or "", url=config.base_url,
                   timeout=config.timeout, workspace=config.workspace)

    def __repr__(self) -> str:
        return f"<TrackClient {self.base_url} site_id={(self._auth or ('',))[0]!r}>"

    # -- one op per request (v1) ------------------------------------------------------------

    def send(self, op: Operation) -> None:
        """Send one op alone (``Operation.single``: v1, or v2's ``/entity`` where v1 would
        misread it); raises an ``APIError`` unless Customer.io took it."""
        method, path, body = op.single()
        self._request(method, path, dumps(body), op.kind, 1)

    def identify(self, person_id: str, /, **attributes: Any) -> None:
        self.send(Identify(person_id, attributes))

    def track(self, person_id: str, name: str, /, **data: Any) -> None:
        self.send(Event(person_id, name, data))

    def track_anonymous(self, anonymous_id: str, name: str, /, **data: Any) -> None:
        self.send(AnonymousEvent(anonymous_id, name, data))

    def page(self, person_id: str, url: str, /, **data: Any) -> None:
        self.send(Page(person_id, url, data))

    def delete(self, person_id: str) -> None:
        self.send(Delete(person_id))

    def suppress(self, person_id: str) -> None:
        self.send(Suppress(person_id))

    def unsuppress(self, person_id: str) -> None:
        self.send(Unsuppress(person_id))

    def add_device(self, person_id: str, token: str, platform: str, /,
                   **attributes: Any) -> None:
        self.send(AddDevice(person_id, token, platform, attributes=attributes))

    def delete_device(self, person_id: str, token: str) -> None:
        self.send(DeleteDevice(person_id, token))

    def merge(self, primary: str, secondary: str) -> None:
        self.send(Merge(primary, secondary))

    # -- many ops per request (v2) ----------------------------------------------------------

    def send_batch(self, ops: Sequence[Operation]) -> list[OpError]:
        """Send ops as one ``/api/v2/batch`` request; return the ops Customer.io refused.

        Raises ``ValidationError`` before sending if an op has no v2 form, an item is over
        32 KB or the body over 500 KB (splitting is the caller's job, see ``packing``).
        """
        if not ops:
            return []
        body = encode_batch(ops)
        kind = ops[0].kind if len({op.kind for op in ops}) == 1 else "mixed"
        response = self._request("POST", "/api/v2/batch", body, kind, len(ops))
        if response.status_code == 207:
            return self._batch_errors(response, ops, kind)
        return []

    @staticmethod
    def _batch_errors(
        response: requests.Response, ops: Sequence[Operation], kind: str
    ) -> list[OpError]:
        failed = {}
        try:
            for error in response.json()["errors"]:
                index = int(error["batch_index"])
                if not 0 <= index < len(ops):
                    raise IndexError(index)
                reason = str(error.get("reason") or "refused")[:200]
                field = str(error["field"])[:200] if error.get("field") else None
                failed[index] = OpError(index, ops[index], reason, field)
        except (ValueError, KeyError, TypeError, IndexError):
            failed = {}
        if not failed:
            # We cannot tell which ops failed; resending all is safe (upserts, event ids).
            raise TransientError(
                "unreadable 207 answer", status=207, kind=kind, count=len(ops)
            )
        return sorted(failed.values(), key=lambda error: error.index)

    # -- the account ----------------------------------------------------------------------

    def region(self) -> dict[str, Any]:
        """Where these credentials belong: ``{"url": ..., "region": "us"|"eu",
        "environment_id": the workspace's id}`` (``GET /api/v1/accounts/region``)."""
        response = self._request("GET", "/api/v1/accounts/region", b"", "region", 0)
        try:
            answer = response.json()
            return {"url": str(answer["url"]), "region": str(answer["region"]),
                    "environment_id": answer["environment_id"]}
        except (ValueError, KeyError, TypeError):
            raise TransientError("unreadable region answer", status=response.status_code,
                                 kind="region", count=0) from None

    # -- transport --------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        if self._given_session is not None:
            return self._given_session
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.session = self._new_session()
            local.pid = os.getpid()
        return local.session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = f"django-cio/{__version__}"
        # Retries are the task's business (with backoff and a budget), not urllib3's.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _request(
        self, method: str, path: str, body: bytes, kind: str, count: int
    ) -> requests.Response:
        started = time.perf_counter()
        failure, maybe_sent = None, True
        try:
            response = self._session().request(
                method, self.base_url + path, data=body, auth=self._auth, timeout=self.timeout,
                headers={"Content-Type": "application/json", **self._headers},
                # A redirect would turn PUT/POST into a body-less GET that "succeeds".
                allow_redirects=False,
            )
        except requests.ConnectTimeout:
            failure, maybe_sent = "timeout", False
        except requests.Timeout:
            failure = "timeout"
        except requests.RequestException as exc:
            # A body that stalls after the headers times out as a ConnectionError.
            failure = ("timeout" if _timed_out(exc) else
                       f"network error ({type(exc).__name__})")
            maybe_sent = not _refused(exc)
        seconds = time.perf_counter() - started
        if failure:
            metrics.request(self.workspace, "error", seconds)
            # Raised outside the except block: the requests exception, whose text holds the
            # URL and so the person id, must not ride along as __context__.
            raise TransientError(failure, status=None, kind=kind, count=count,
                                 maybe_sent=maybe_sent)
        status = response.status_code
        metrics.request(self.workspace, status, seconds)
        # One line per request, its numbers also as fields for structured (JSON) log handlers.
        fields = {"kind": kind, "ops": count, "bytes": len(body), "status": status,
                  "ms": round(seconds * 1000, 1)}
        request_logger.info(
            "customerio %s: %d %s op(s), %d bytes, HTTP %d in %.0f ms",
            "batch" if path == "/api/v2/batch" else "request", count, kind, len(body), status,
            seconds * 1000, extra={"customerio": fields},
        )
        if 200 <= status < 300:
            return response
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(retry_after=retry_after, kind=kind, count=count)
        if 300 <= status < 400:
            reason = f"redirected: point {self._url_setting} at the final address"
        elif status == 401:
            reason = f"unauthorized: check {self._key_settings}"
        else:
            reason = _REASONS.get(status, "server error" if status >= 500 else "refused")
        error = TransientError if status == 408 or status >= 500 else PermanentError
        # Answered before any work (unavailable, timed out waiting for the body), or refused.
        maybe_sent = status >= 500 and status != 503
        raise error(reason, status=status, kind=kind, count=count, maybe_sent=maybe_sent)

    def close(self) -> None:
        """Close this thread's session (others close when their threads and process end)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            del self._local.session, self._local.pid


class AppClient(TrackClient):
    """Customer.io's App API for transactional messages, over Bearer auth with an App API key
    (not the Track key)::

        client = AppClient(app_api_key, region="eu")
        client.send_message(SendEmail(Person(email="ada@example.com"), "welcome",
                                      fields={"to": "ada@example.com"}))
        # {"delivery_id": "...", "queued_at": 1700000000}

    The App API offers no idempotency key: an error's ``maybe_sent`` says whether the message
    may have gone out all the same (a timeout once the request left, a 500). Resend only what
    it says was not sent.
    """

    _key_settings = "APP_API_KEY"
    _url_setting = "APP_URL"

    def __init__(self, api_key: str, region: str = "us", url: str | None = None,
                 timeout: float = 10, session: requests.Session | None = None,
                 pool_size: int = 10, workspace: str = "default") -> None:
        if url is None and region not in APP_REGION_URLS:
            raise ConfigurationError(f"region must be one of {sorted(APP_REGION_URLS)}")
        super().__init__("app", api_key, url=url or APP_REGION_URLS[region], timeout=timeout,
                         session=session, pool_size=pool_size, workspace=workspace)
        self._auth = None
        self._headers = {"Authorization": f"Bearer {api_key}"}

    @classmethod
    def from_settings(cls, config: CIOSettings) -> AppClient:
        return cls(config.app_api_key or "", url=config.app_base_url, timeout=config.timeout,
                   workspace=config.workspace)

    def __repr__(self) -> str:
        return f"<AppClient {self.base_url}>"

    def send_message(self, op: SendMessage) -> dict[str, Any]:
        """Send a transactional message; Customer.io's ``delivery_id`` and ``queued_at``."""
        method, path, body = op.single()
        response = self._request(method, path, dumps(body), op.kind, 1)
        try:  # taken: an answer we cannot read still means sent (sending again would not)
            answer = response.json()
            return {"delivery_id": str(answer["delivery_id"]),
                    "queued_at": answer.get("queued_at")}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"delivery_id": None, "queued_at": None}
