"""Where ops go: the Track API (``http``), a list (``locmem``), stdout (``console``), nowhere."""

from __future__ import annotations

import functools
import threading

from django.utils.module_loading import import_string

from ..conf import CIOSettings, get_settings
from .base import BaseBackend

_lock = threading.Lock()
_cached: tuple[CIOSettings, BaseBackend] | None = None


def get_backend() -> BaseBackend:
    """The backend named by ``CUSTOMERIO['BACKEND']``, one per process and settings."""
    global _cached
    config = get_settings()
    with _lock:
        if _cached is None or _cached[0] is not config:
            _cached = (config, import_string(config.backend)(config))
        return _cached[1]


@functools.cache
def _import(path: str) -> type[BaseBackend]:
    return import_string(path)


def backend_class() -> type[BaseBackend]:
    """The class named by ``CUSTOMERIO['BACKEND']``, without making one (nor needing keys)."""
    return _import(get_settings().backend)


__all__ = ["BaseBackend", "backend_class", "get_backend"]
