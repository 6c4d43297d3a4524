"""Identify dedup: don't send a person's attributes again while Customer.io has them.

Per person, the cache (``CUSTOMERIO['CACHE']``, a shared Redis through django-redis) holds a
hash of the attributes of the last identify that got a 2xx, for ``DEDUP_TTL`` seconds. An
identify with the same hash is dropped before sending. Only a success is remembered, so
A -> B -> A sends the third; a cache error means "send" (an error is never "seen"). Deleting,
suppressing or merging a person forgets them, so a later identify recreates them.

Keys are HMACs of the person id (keyed with ``SECRET_KEY``): no emails in the cache's keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Sequence

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

from .conf import get_settings
from .exceptions import ValidationError
from .operations import Identify, Merge, Operation

logger = logging.getLogger("django_cio")

HITS_KEY = "django_cio:dedup:hits"
MISSES_KEY = "django_cio:dedup:misses"
_ANONYMOUS_ID = "anonymous_id"
# Ops after which Customer.io no longer holds what an identify sent.
_FORGETTING = ("delete", "suppress", "merge")


def collapse(ops: Sequence[Operation]) -> list[Operation]:
    """Merge consecutive identifies of one person (none of that person's other ops between
    them) into the first, later attributes winning, so each person's ops keep their order."""
    result: list[Operation] = []
    open_identify: dict[str, int] = {}  # person -> index in result of their latest identify
    for op in ops:
        if isinstance(op, Identify) and op.person_id in open_identify:
            index = open_identify[op.person_id]
            earlier = result[index]
            assert isinstance(earlier, Identify)
            try:
                result[index] = Identify(op.person_id, {**earlier.attributes, **op.attributes},
                                         timestamp=op.timestamp)
                continue
            except ValidationError:  # together they break a limit: send both
                pass
        for person in _people(op):
            open_identify.pop(person, None)
        if isinstance(op, Identify):
            open_identify[op.person_id] = len(result)
        result.append(op)
    return result


def drop_seen(ops: Sequence[Operation]) -> list[Operation]:
    """``ops`` without the identifies Customer.io already has (per the cache)."""
    cio = get_settings()
    identifies = [op for op in ops if isinstance(op, Identify)]
    if not cio.dedup_ttl or not identifies:
        return list(ops)
    cache = caches[cio.cache]
    try:
        stored = cache.get_many({_key(op.person_id) for op in identifies})
    except Exception as exc:  # a cache outage means sending, never "seen"
        logger.warning("customerio: dedup cache unavailable (%s); sending", type(exc).__name__)
        return list(ops)
    kept: list[Operation] = []
    forgotten: set[str] = set()
    hits = 0
    for op in ops:
        if (isinstance(op, Identify) and op.person_id not in forgotten
                and _ANONYMOUS_ID not in op.attributes  # a login's merge is never "seen"
                and stored.get(_key(op.person_id)) == fingerprint(op)):
            hits += 1
            continue
        if op.kind in _FORGETTING:
            forgotten.update(_people(op))
        kept.append(op)
    _count(cache, hits, len(identifies) - hits)
    return kept


def forget(ops: Iterable[Operation]) -> None:
    """Before deleting, suppressing or merging people: forget them first, so that another
    worker's identify sent meanwhile is not dropped as "already there"."""
    people = {_key(person) for op in ops if op.kind in _FORGETTING for person in _people(op)}
    if people and get_settings().dedup_ttl:
        try:
            caches[get_settings().cache].delete_many(people)
        except Exception as exc:  # then the remembered hash simply stays until its TTL
            logger.warning("customerio: dedup cache unavailable (%s)", type(exc).__name__)


def remember(sent: Iterable[Operation]) -> None:
    """Record identifies Customer.io accepted, and forget deleted, suppressed, merged people."""
    cio = get_settings()
    if not cio.dedup_ttl:
        return
    seen: dict[str, str] = {}
    forget: set[str] = set()
    for op in sent:
        if isinstance(op, Identify):
            seen[_key(op.person_id)] = fingerprint(op)
            forget.discard(_key(op.person_id))
        elif op.kind in _FORGETTING:
            for person in _people(op):
                forget.add(_key(person))
                seen.pop(_key(person), None)
    try:
        cache = caches[cio.cache]
        if seen:
            cache.set_many(seen, timeout=cio.dedup_ttl)
        if forget:
            cache.delete_many(forget)
    except Exception as exc:  # not remembering only costs a resend
        logger.warning("customerio: dedup cache unavailable (%s)", type(exc).__name__)


def fingerprint(op: Identify) -> str:
    """A hash of an identify's attributes (key order does not matter). ``anonymous_id`` is
    left out: it ties past anonymous events to the person, it is not an attribute they keep."""
    attributes = {key: value for key, value in op.attributes.items() if key != _ANONYMOUS_ID}
    encoded = json.dumps(attributes, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]


def counters() -> dict[str, int]:
    """Identifies dropped (hits) and sent (misses) since the counters were created."""
    try:
        values = caches[get_settings().cache].get_many([HITS_KEY, MISSES_KEY])
    except Exception:  # a status report must not fail on the cache
        return {}
    return {"hits": int(values.get(HITS_KEY, 0)), "misses": int(values.get(MISSES_KEY, 0))}


def _count(cache: BaseCache, hits: int, misses: int) -> None:
    for key, amount in ((HITS_KEY, hits), (MISSES_KEY, misses)):
        if amount:
            try:
                cache.add(key, 0, timeout=None)
                cache.incr(key, amount)
            except Exception:  # counters are best effort
                return


def _key(person_id: str) -> str:
    """Per workspace and person: another site sharing the cache has its own memory."""
    secret = str(settings.SECRET_KEY).encode()
    person = f"{get_settings().site_id}\x00{person_id}".encode()
    return f"django_cio:identify:{hmac.new(secret, person, hashlib.sha256).hexdigest()}"


def _people(op: Operation) -> tuple[str, ...]:
    return (op.primary, op.secondary) if isinstance(op, Merge) else (op.person_id,)
