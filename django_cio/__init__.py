"""django-cio: a Django project's people and events in Customer.io, reliably and fast."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from .operations import Operation

# Ops recorded by the locmem backend, like ``django.core.mail.outbox``.
outbox: list[Operation] = []

__all__ = ["__version__", "outbox"]
