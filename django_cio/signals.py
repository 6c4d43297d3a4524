"""Signals around delivery, in the spirit of django-anymail's ``pre_send``/``post_send``.

``pre_send(sender=backend class, ops=list)`` fires in the worker before a message's ops are
sent. Receivers may change the list in place: remove an op to drop it, or replace one (for
example with ``dataclasses.replace``) to change what is sent.

``post_send(sender=backend class, results=list[OpResult])`` fires after, with one result per
op: ``"sent"``, ``"skipped"`` (an identify Customer.io already has, or one merged with another
identify of the same person; see ``dedup``; or a transactional message already sent),
``"failed"`` (now a dead letter) or ``"retrying"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from django.dispatch import Signal

from .operations import Operation

pre_send = Signal()
post_send = Signal()


@dataclass(frozen=True)
class OpResult:
    """What became of one op: its ``status``, for failures the ``reason`` and HTTP status, and
    for a transactional message sent, Customer.io's ``delivery_id``."""

    op: Operation
    status: Literal["sent", "skipped", "failed", "retrying"]
    reason: str = ""
    http_status: int | None = None
    delivery_id: str | None = None
