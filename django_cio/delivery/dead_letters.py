"""Dead letters: ops Customer.io refused or that ran out of retries, kept for replay."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import router
from django.db.models import QuerySet

from .. import metrics
from ..broker.messages import MAX_FAILURES
from ..broker.outbox import publish_or_park
from ..broker.publish import split
from ..conf import get_settings
from ..models import DeadLetter
from ..operations import Json
from .messages import message_ids, release, reviewed

logger = logging.getLogger("django_cio")


def store(failed: list[tuple[Json, str, int | None]], attempts: int) -> None:
    """Keep failed ops, each ``(op, reason, HTTP status)``, as dead letters (a transactional
    message as its claim says: sent, none; may have gone, "may have been sent")."""
    failed = reviewed(failed)
    if not failed:
        return
    stored = [(_storable(op), reason, status) for op, reason, status in failed]
    alias = router.db_for_write(DeadLetter)
    DeadLetter.objects.using(alias).bulk_create(
        DeadLetter.for_op(op, reason=reason[:200], status=status,
                          attempts=min(attempts, MAX_FAILURES))
        for op, reason, status in stored
    )
    metrics.dead_letters(op for op, _, _ in stored)
    logger.warning("customerio: %d op(s) dead-lettered (%s)", len(failed),
                   ", ".join(sorted({reason for _, reason, _ in failed}))[:200])


def _storable(raw: Any) -> Json:
    """An op in a form a dead letter can keep: a mapping, and JSON columns refuse NaN,
    infinity, NUL characters and lone surrogates, so an op holding one is kept as its
    ``ascii()`` text."""
    try:
        text = json.dumps(raw, ensure_ascii=False, allow_nan=False)
        text.encode()
    except (TypeError, ValueError):  # not JSON, NaN or infinity, a lone surrogate
        return {"raw": ascii(raw)}
    if "\\u0000" in text:
        return {"raw": ascii(raw)}
    return raw if isinstance(raw, dict) else {"raw": raw}


def replay(letters: QuerySet[DeadLetter]) -> int:
    """Queue these letters' ops again (with their original event ids) and delete the letters
    that the broker (or, if it is down, the Outbox) took; return how many it took. Letters of
    a workspace the settings no longer have are kept. A transactional message's claim is
    released first (unless an attempt may still be in flight): replaying one that "may have
    been sent" is the reviewer's decision to send it again."""
    known = get_settings().workspace_names
    by_op = {id(letter.op): letter for letter in letters.filter(workspace__in=known)}
    release(message_ids(letter.op for letter in by_op.values()), settled_only=True)
    replayed = []
    for chunk in split([letter.op for letter in by_op.values()]):
        if publish_or_park(chunk, using=letters.db):  # kept until the message is safe
            replayed += [by_op[id(op)].pk for op in chunk]
    DeadLetter.objects.using(letters.db).filter(pk__in=replayed).delete()
    return len(replayed)
