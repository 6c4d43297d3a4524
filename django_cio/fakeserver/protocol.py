"""The Track API's wire protocol as the fake speaks it: answers (``Reply``), and v1 requests
turned into the v2 items they mean, so that one store and one set of checks serve both."""

from __future__ import annotations

from typing import Any

from .store import Json

MAX_V1_BYTES = 1_000_000


class Reply(Exception):
    """Stop handling and answer ``status`` with ``body``."""

    def __init__(
        self, status: int, body: Json | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body or {}, headers or {}


def v1_error(message: str) -> Reply:
    return Reply(400, {"meta": {"error": message}})


def v1_identifiers(value: str, email_identifiers: bool) -> Json:
    """What a person in a v1 path means: Customer.io reads a ``cio_`` prefix as a cio_id and,
    in workspaces that identify people by email, an email-shaped value as an email."""
    if value.startswith("cio_"):
        return {"cio_id": value[len("cio_"):]}
    if email_identifiers and "@" in value:
        return {"email": value}
    return {"id": value}


def from_v1(method: str, parts: list[str], body: Any, email_identifiers: bool = True,
            query: dict[str, list[str]] | None = None) -> Json:
    """Turn a v1 request into the v2 item it means (manual segments, which v2 lacks, into
    the fake's own ``"type": "segment"`` item); ``Reply(404)`` if it means nothing."""
    if not isinstance(body, dict):
        raise v1_error("body must be a JSON object")

    def person(action: str, **extra: Any) -> Json:
        return {"type": "person", "identifiers": v1_identifiers(parts[1], email_identifiers),
                "action": action, **extra}

    def event(**extra: Any) -> Json:
        kind = body.get("type", "event")
        op = {"type": "person", "action": kind if kind in ("page", "screen") else "event",
              "name": body.get("name"), "attributes": body.get("data") or {}, **extra}
        op.update({key: body[key] for key in ("id", "timestamp") if key in body})
        return op

    route = (method, parts[0], len(parts), parts[2] if len(parts) > 2 else None)
    if route == ("PUT", "customers", 2, None):
        attributes = dict(body)
        timestamp = attributes.pop("_timestamp", None)
        return person("identify", attributes=attributes,
                      **({"timestamp": timestamp} if timestamp is not None else {}))
    if route == ("DELETE", "customers", 2, None):
        return person("delete")
    if route == ("POST", "customers", 3, "events"):
        return event(identifiers=v1_identifiers(parts[1], email_identifiers))
    if route in (("POST", "customers", 3, "suppress"), ("POST", "customers", 3, "unsuppress")):
        return person(parts[2])
    if route == ("PUT", "customers", 3, "devices"):
        device = dict(body.get("device") or {})
        device["token"] = device.pop("id", None)
        return person("add_device", device=device)
    if route == ("DELETE", "customers", 4, "devices"):
        return person("delete_device", device={"token": parts[3]})
    if route == ("POST", "events", 1, None):
        return event(anonymous_id=body.get("anonymous_id"))
    if route[:3] == ("POST", "segments", 3) and route[3] in ("add_customers",
                                                             "remove_customers"):
        return {"type": "segment", "action": route[3], "segment_id": parts[1],
                "ids": body.get("ids"), "id_type": (query or {}).get("id_type", ["id"])[0]}
    if route == ("POST", "merge_customers", 1, None):
        return {"type": "person", "action": "merge", "primary": body.get("primary"),
                "secondary": body.get("secondary")}
    raise Reply(404, {"meta": {"error": "not found"}})
