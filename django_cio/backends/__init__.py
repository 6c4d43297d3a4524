"""Where ops go: the Track API (``http``), a list (``locmem``), stdout (``console``), nowhere."""

from __future__ import annotations

import functools
import threading

from django.utils.module_loading import import_string

from ..conf import DEFAULT_WORKSPACE, CIOSettings, get_settings
from .base import BaseBackend

_lock = threading.Lock()
_cached: dict[str, tuple[CIOSettings, BaseBackend]] = {}


def get_backend(workspace: str = DEFAULT_WORKSPACE) -> BaseBackend:
    """The backend named by ``CUSTOMERIO['BACKEND']`` for a workspace, one per process,
    workspace and settings."""
    config = get_settings(workspace)
    with _lock:
        cached = _cached.get(workspace)
        if cached is None or cached[0] is not config:
            cached = _cached[workspace] = (config, import_string(config.backend)(config))
        return cached[1]


@functools.cache
def _import(path: str) -> type[BaseBackend]:
    return import_string(path)


def backend_class() -> type[BaseBackend]:
    """The class named by ``CUSTOMERIO['BACKEND']``, without making one (nor needing keys)."""
    return _import(get_settings().backend)


__all__ = ["BaseBackend", "backend_class", "get_backend"]
