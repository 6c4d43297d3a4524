"""Which workspace an op goes to, picked once, when it is queued: the one named in the call
(``django_cio.workspace("eu")``), else the registry's (``Customer.workspace``), else the
project's router (``CUSTOMERIO["ROUTER"]``), else ``default``. The op carries its choice from
then on, through the broker, the Outbox, retries and dead letters."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.utils.module_loading import import_string

from .conf import DEFAULT_WORKSPACE, get_settings
from .exceptions import ConfigurationError
from .operations import Json, Operation

Router = Callable[[Operation], "str | None"]


def route(op: Operation) -> Operation:
    """Settle ``op``'s workspace (if the call did not name one); raise ``ConfigurationError``
    for a workspace the settings do not have."""
    if op.workspace is None:
        path = get_settings().router
        op.route_to((_router(path)(op) if path else None) or DEFAULT_WORKSPACE)
    get_settings(op.workspace)  # an unknown name fails here, in the caller's code
    return op


@functools.cache
def _router(path: str) -> Router:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"CUSTOMERIO['ROUTER'] {path!r} cannot be imported") from exc


def workspace_of(raw: Json | Any) -> str:
    """The workspace of a queued op (``Operation.to_dict()`` output)."""
    name = raw.get("workspace") if isinstance(raw, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_WORKSPACE


def by_workspace(ops: Iterable[Json]) -> dict[str, list[Json]]:
    """Queued ops grouped by workspace, in their order: one message never mixes two."""
    groups: dict[str, list[Json]] = {}
    for op in ops:
        groups.setdefault(workspace_of(op), []).append(op)
    return groups


def one_workspace(ops: Sequence[Json]) -> str:
    """The workspace of a message's ops (which never mixes workspaces)."""
    return workspace_of(ops[0]) if ops else DEFAULT_WORKSPACE
