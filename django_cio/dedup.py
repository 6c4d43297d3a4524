"""Identify dedup: don't send attributes Customer.io already has, and never lose a change.

Memory. Per workspace and person, one Redis hash (the cache's own Redis, through django-redis or
Django's ``RedisCache``) maps each attribute to what we know of it::

    k <ts> <value hash> <born>            Customer.io has this value, as of the app's time <ts>
    p <ts> <value hash> <born> <owner>    a request sending this value is in flight (a claim)
    field "!": ! 0 - <born> <owner>       a delete, suppress or merge of the person is in flight

``<ts>`` is the identify's ``timestamp`` (Customer.io orders attribute updates by it), ``<born>``
the Redis server's time of the write. An entry older than ``DEDUP_TTL`` counts as absent (the
key's TTL is refreshed by every write, so entries bound their own age). The key is an HMAC of
the site id and person id, fields and value hashes are HMACs too (keyed with ``SECRET_KEY``): no
ids, emails or attribute values in Redis.

A delivery (``delivery.engine.Delivery.send``) goes through four steps:

1. ``packing.collapse`` merges consecutive identifies of a person (not part of dedup's memory).
2. ``drop_seen`` claims, atomically per person (Lua), the attributes about to be sent, and drops
   those memory says Customer.io has: the same value ("k", same hash; its time moves up to ours),
   or a newer time ("k" with a newer ts: Customer.io ignores an older update). An identify left
   with nothing to send costs no request; one carrying ``anonymous_id`` is always sent.
3. ``forget`` marks people about to be deleted, suppressed or merged (memory wiped, "!" set), and
   wipes the memory of people whose identifies skipped step 2 (a backfill that opts out of
   dedup), so nothing remembered from before can hide a later change.
4. After a 2xx, ``remember`` turns each claim into "k" only if its field still holds that claim
   (compare-and-set), and clears a person whose delete, suppress or merge went through.

Why dedup only ever costs a resend: what memory knew is replaced by a claim before the request
leaves, and a claim is never "seen", so A, then B in flight, then A sends the last A; a claim
overwritten by a later identify or wiped by a delete is not remembered; an identify sent without
a claim (two updates of one attribute in the same second, a message queued without a timestamp)
leaves the attribute unknown. A cache error means sending everything and remembering nothing.
Without a Redis cache dedup is off (a warning says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

from .caching import redis_client
from .conf import DEFAULT_WORKSPACE, get_settings
from .operations import Identify, Operation

logger = logging.getLogger("django_cio")

HITS_KEY = "django_cio:dedup:hits"
MISSES_KEY = "django_cio:dedup:misses"
_ANONYMOUS_ID = "anonymous_id"
# Ops after which Customer.io no longer holds what an identify sent.
_FORGETTING = ("delete", "move", "suppress", "merge")
# Where an op keeps its claim between drop_seen/forget and remember (not a dataclass field:
# it never reaches the broker, and an op built again from a message claims again).
_CLAIM_ATTR = "_dedup_claim"
# Above any Unix time an identify may carry (operations caps them below 10**11): an identify
# without a timestamp counts at Customer.io as sent "now", so it outranks every update.
_NO_TIME = "99999999999999"
# An identify sent unclaimed after its person's memory was wiped (see ``forget``).
_WIPED = "wiped"

# Memory entries: "<state> <ts> <value hash> <born> [<owner>]". Helpers shared by the scripts.
_LUA_COMMON = """
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[1])
local function entry(key, field)
  local raw = redis.call('HGET', key, field)
  if not raw then return nil end
  local s, ts, vh, born, owner = string.match(raw, '^(%S+) (%S+) (%S+) (%S+) ?(%S*)$')
  if not born or now - tonumber(born) >= ttl then return nil end  -- too old: unknown
  return {s = s, ts = tonumber(ts), tsraw = ts, vh = vh, born = born, owner = owner}
end
"""

# Person keys carry their workspace's epoch (see ``_epoch``): KEYS[1..m] are the epochs, ARGV[3]
# is m and ARGV[4..3+m] the epochs the keys were made with.
_LUA_EPOCHS = """
local m = tonumber(ARGV[3] or '0')
local function epoch_moved()
  for i = 1, m do
    if (redis.call('GET', KEYS[i]) or '0') ~= ARGV[3 + i] then return true end
  end
  return false
end
"""

# KEYS: epochs (see _LUA_COMMON), then a person per identify. ARGV: ttl, owner, m, epochs,
# then per person: mode ("d" dedup, "n" no timestamp), ts, n, n x (field, value hash).
# Returns {now, {indexes of the fields Customer.io has} per person}, or {"moved"}.
_CLAIM = _LUA_COMMON + _LUA_EPOCHS + """
if epoch_moved() then return {'moved'} end
local owner = ARGV[2]
local result = {now}
local a = 4 + m
for i = m + 1, #KEYS do
  local key = KEYS[i]
  local mode, tsraw, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local ts = tonumber(tsraw)
  a = a + 3
  local seen = {}
  local blocked = entry(key, '!') ~= nil  -- being deleted: send, claim nothing
  for j = 1, n do
    local field, vh = ARGV[a], ARGV[a + 1]
    a = a + 2
    local cur = (not blocked) and entry(key, field)
    local write = 'p ' .. tsraw .. ' ' .. vh .. ' ' .. now .. ' ' .. owner
    if blocked then
      write = nil
    elseif mode == 'n' then  -- its time is its arrival: nothing may be remembered meanwhile
      write = 'p ' .. tsraw .. ' - ' .. now .. ' -'
    elseif cur and cur.s == 'k' and (cur.vh == vh or cur.ts > ts) then
      seen[#seen + 1] = j  -- Customer.io has it, or something newer
      write = nil
      if cur.vh == vh and ts > cur.ts then  -- same value, newer: its time moves up
        write = 'k ' .. tsraw .. ' ' .. vh .. ' ' .. cur.born
      end
    elseif cur and cur.s == 'p' then
      if cur.ts > ts then  -- a newer update in flight: ours is sent, theirs stays claimed
        write = nil
      elseif cur.ts == ts and cur.vh ~= vh and cur.owner ~= owner then
        write = 'p ' .. tsraw .. ' ' .. vh .. ' ' .. now .. ' -'  -- same second: order unknown
      end
    end
    if write then redis.call('HSET', key, field, write) end
  end
  if not blocked then redis.call('EXPIRE', key, ttl) end
  result[#result + 1] = seen
end
return result
"""

# KEYS: one per entry. ARGV: ttl, then per key: "c" claim born owner ts n n x (field, hash):
# remember what still holds the claim; "d" owner: clear the person unless another delete is in
# flight; "x" n n x field: forget (an identify sent without a claim).
_REMEMBER = _LUA_COMMON + """
local a = 2
for _, key in ipairs(KEYS) do
  local kind = ARGV[a]
  if kind == 'c' then
    local born, owner, tsraw, n = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
    a = a + 5
    local blocked = entry(key, '!') ~= nil
    for j = 1, n do
      local field, vh = ARGV[a], ARGV[a + 1]
      a = a + 2
      local claim = 'p ' .. tsraw .. ' ' .. vh .. ' ' .. born .. ' ' .. owner
      if not blocked and redis.call('HGET', key, field) == claim then
        redis.call('HSET', key, field, 'k ' .. tsraw .. ' ' .. vh .. ' ' .. now)
      end
    end
    if not blocked then redis.call('EXPIRE', key, ttl) end
  elseif kind == 'd' then
    local tomb = entry(key, '!')
    if not tomb or tomb.owner == ARGV[a + 1] then redis.call('DEL', key) end
    a = a + 2
  else
    local n = tonumber(ARGV[a + 1])
    for j = 1, n do redis.call('HDEL', key, ARGV[a + 1 + j]) end
    a = a + 2 + n
  end
end
"""

# KEYS: epochs, then people about to be deleted, suppressed or merged. ARGV: ttl, owner, m,
# epochs. Returns "moved" if an epoch moved.
_FORGET = _LUA_COMMON + _LUA_EPOCHS + """
if epoch_moved() then return 'moved' end
for i = m + 1, #KEYS do
  local key = KEYS[i]
  redis.call('DEL', key)
  redis.call('HSET', key, '!', '! 0 - ' .. now .. ' ' .. ARGV[2])
  redis.call('EXPIRE', key, ttl)
end
"""


@dataclass
class _Claim:
    """What an identify claimed: its person's key, and a value hash per attribute field."""

    key: str
    owner: str
    ts: str
    fields: dict[str, str]
    born: str = ""


def drop_seen(ops: Sequence[Operation]) -> list[Operation]:
    """``ops`` with the attributes Customer.io already has taken out of identifies (an
    identify left with none is dropped), the rest claimed for ``remember``."""
    config = get_settings()
    identifies = [op for op in ops if isinstance(op, Identify)]
    if not config.dedup_ttl or not identifies or any(map(_moves_epoch, ops)):
        return list(ops)  # an op naming people by email could change anyone's attributes
    todo: list[Identify] = []
    forgotten: set[str] = set()
    for op in ops:  # after a delete in this delivery, nothing of a person is "there"
        if isinstance(op, Identify) and op.person not in forgotten:
            todo.append(op)
        if op.kind in _FORGETTING:
            forgotten.update(op.people)
    try:
        seen = _claim(todo)
    except Exception as exc:  # a cache outage means sending, never "seen"
        logger.warning("customerio: dedup cache unavailable (%s); sending", type(exc).__name__)
        return list(ops)
    kept = [kept for op in ops if (kept := seen.get(id(op), op)) is not None]
    hits = len(ops) - len(kept)
    _count(caches[config.cache], hits, len(identifies) - hits)
    return kept


def forget(ops: Iterable[Operation]) -> None:
    """Before sending: wipe the people about to be deleted, suppressed or merged (an identify
    in flight meanwhile is then not remembered), and the memory of people whose identifies
    ``drop_seen`` did not claim (a backfill that opts out of dedup: hashing and claiming a
    million rows' attributes would cost more than the requests it saves), so that nothing
    remembered from before can hide a later change. (Ops naming people by email or cio_id:
    see ``move_epochs``.)"""
    if not get_settings().dedup_ttl:
        return
    ops = list(ops)
    forgetting = [op for op in ops if op.kind in _FORGETTING and not _moves_epoch(op)]
    unclaimed = [op for op in ops if isinstance(op, Identify) and not hasattr(op, _CLAIM_ATTR)
                 and not _moves_epoch(op)]
    try:
        if forgetting:
            _mark_forgetting(forgetting)
        if unclaimed:
            _wipe(unclaimed)
    except Exception as exc:  # then what memory holds expires within DEDUP_TTL
        logger.warning("customerio: dedup cache unavailable (%s)", type(exc).__name__)


def remember(sent: Iterable[Operation]) -> None:
    """After a 2xx: remember each claimed attribute that is still ours, clear the people
    deleted, suppressed or merged, and forget what went without a claim."""
    if not get_settings().dedup_ttl:
        return
    try:
        _remember(sent)
    except Exception as exc:  # not remembering only costs a resend
        logger.warning("customerio: dedup cache unavailable (%s)", type(exc).__name__)


def _remember(sent: Iterable[Operation]) -> None:
    keys: list[str] = []
    args: list[Any] = [_ttl()]
    epochs: dict[str | None, str] = {}
    for op in sent:
        if _moves_epoch(op):
            continue  # nothing remembered of people named by email or cio_id
        if isinstance(op, Identify):
            claim = getattr(op, _CLAIM_ATTR, None)
            if claim is _WIPED:  # nothing to remember, nothing stale left
                continue
            if claim is None:  # sent without a claim: what memory had may be stale
                epoch = epochs.get(op.workspace) or epochs.setdefault(op.workspace,
                                                                      _epoch(op.workspace))
                claim = _Claim(_key(op.person, op.workspace, epoch), "", "", fingerprint(op))
                keys.append(claim.key)
                args += ["x", len(claim.fields), *claim.fields]
            elif claim.fields:
                keys.append(claim.key)
                args += ["c", claim.born, claim.owner, claim.ts, len(claim.fields)]
                args += [item for pair in claim.fields.items() for item in pair]
        elif op.kind in _FORGETTING:
            owner, marked = getattr(op, _CLAIM_ATTR, ("", None))
            if marked is None:  # not marked (the cache failed then): clear them now
                epoch = epochs.get(op.workspace) or epochs.setdefault(op.workspace,
                                                                      _epoch(op.workspace))
                marked = [_key(person, op.workspace, epoch) for person in op.people]
            for key in marked:
                keys.append(key)
                args += ["d", owner]
    client = _client()
    if keys and client is not None:
        client.register_script(_REMEMBER)(keys=keys, args=args)


def enabled() -> bool:
    """Whether identify dedup is on: a ``DEDUP_TTL`` and a Redis cache to keep it in."""
    config = get_settings()
    return bool(config.dedup_ttl) and redis_client(config.cache) is not None


def fingerprint(op: Identify) -> dict[str, str]:
    """What memory holds of an identify: attribute field -> value hash (HMACs, key order does
    not matter). ``anonymous_id`` is left out: it ties past anonymous events to the person, it
    is not an attribute they keep, and a login carrying it is always sent."""
    return {_hash("a", name): _hash("v", json.dumps(value, sort_keys=True, separators=(",", ":")))
            for name, value in op.attributes.items() if name != _ANONYMOUS_ID}


def counters() -> dict[str, int]:
    """Identifies dropped (hits) and sent (misses) since the counters were created."""
    try:
        values = caches[get_settings().cache].get_many([HITS_KEY, MISSES_KEY])
    except Exception:  # a status report must not fail on the cache
        return {}
    return {"hits": int(values.get(HITS_KEY, 0)), "misses": int(values.get(MISSES_KEY, 0))}


def _claim(identifies: list[Identify]) -> dict[int, Identify | None]:
    """Claim the identifies' attributes; return id(op) -> the op without the attributes
    Customer.io has (None when nothing is left to send). Raises on cache errors, leaving the
    ops unclaimed."""
    client = _client()
    if client is None:
        return {}
    owner = os.urandom(8).hex()
    for _attempt in range(3):
        epochs = {workspace: _epoch(workspace) for workspace in {op.workspace for op in identifies}}
        claims = [_Claim(_key(op.person, op.workspace, epochs[op.workspace]), owner,
                         str(op.timestamp) if op.timestamp is not None else _NO_TIME,
                         fingerprint(op)) for op in identifies]
        args: list[Any] = [_ttl(), owner, len(epochs), *epochs.values()]
        for op, claim in zip(identifies, claims, strict=True):
            mode = "n" if op.timestamp is None else "d"
            args += [mode, claim.ts, len(claim.fields)]
            args += [item for pair in claim.fields.items() for item in pair]
        keys = [*map(_epoch_key, epochs), *(c.key for c in claims)]
        now, *seen = client.register_script(_CLAIM)(keys=keys, args=args)
        if now != b"moved":
            break
    else:  # memory keeps being forgotten under our feet: send everything, claim nothing
        return {}
    result: dict[int, Identify | None] = {}
    for op, claim, indexes in zip(identifies, claims, seen, strict=True):
        claim.born = str(now)
        if op.timestamp is None:  # never remembered: its time is its arrival
            claim.fields = {}
        kept = _without(op, claim, set(indexes))
        if kept is not None:
            object.__setattr__(kept, _CLAIM_ATTR, claim)
        result[id(op)] = kept
    return result


def _without(op: Identify, claim: _Claim, seen: set[int]) -> Identify | None:
    """``op`` without the attributes at 1-based ``seen`` positions of ``claim.fields``; None
    if that leaves nothing to send (an identify with no attributes, or carrying
    ``anonymous_id``, is always sent)."""
    if not seen:
        return op
    names = [name for name in op.attributes if name != _ANONYMOUS_ID]
    dropped = {names[index - 1] for index in seen}
    claim.fields = {field: value for position, (field, value) in enumerate(claim.fields.items(), 1)
                    if position not in seen}
    attributes = {name: value for name, value in op.attributes.items() if name not in dropped}
    if not attributes:
        return None
    return Identify(op.person_id, attributes, timestamp=op.timestamp, workspace=op.workspace,
                    id_type=op.id_type)


def _wipe(identifies: list[Identify]) -> None:
    """Drop what memory holds of these people, before their identifies are sent unclaimed."""
    client = _client()
    if client is None:
        return
    epochs = {workspace: _epoch(workspace) for workspace in {op.workspace for op in identifies}}
    keys = list(dict.fromkeys(_key(op.person, op.workspace, epochs[op.workspace])
                              for op in identifies))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])
    for op in identifies:
        object.__setattr__(op, _CLAIM_ATTR, _WIPED)


def _mark_forgetting(ops: list[Operation]) -> None:
    client = _client()
    if client is None:
        return
    owner = os.urandom(8).hex()
    for _attempt in range(3):
        epochs = {workspace: _epoch(workspace) for workspace in {op.workspace for op in ops}}
        marked = [[_key(person, op.workspace, epochs[op.workspace]) for person in op.people]
                  for op in ops]
        keys = [*map(_epoch_key, epochs), *(key for op_keys in marked for key in op_keys)]
        if client.register_script(_FORGET)(keys=keys, args=[_ttl(), owner, len(epochs),
                                                            *epochs.values()]) != b"moved":
            break
    else:
        return  # unmarked: what memory holds of them expires within DEDUP_TTL
    for op, op_keys in zip(ops, marked, strict=True):
        object.__setattr__(op, _CLAIM_ATTR, (owner, op_keys))


def move_epochs(ops: Iterable[Operation]) -> bool:
    """Make memory forget every person of the workspaces of ``ops`` that name someone by email
    or cio_id (an identify, delete, suppress or merge may concern anyone memory knows by id):
    each moves its workspace's epoch, which every key of memory carries. Called before such a
    request leaves, and again once it is answered or failed (an identify claimed meanwhile
    must not be remembered). False if the cache refused: the caller must not send them."""
    workspaces = {op.workspace for op in ops if _moves_epoch(op)}
    if not workspaces or not get_settings().dedup_ttl:
        return True
    try:
        client = _client()
        if client is not None:
            with client.pipeline(transaction=False) as pipe:
                for workspace in workspaces:
                    pipe.set(_epoch_key(workspace), _new_epoch())
                pipe.execute()
        return True
    except Exception as exc:
        logger.warning("customerio: dedup cache unavailable (%s)", type(exc).__name__)
        return False


def _new_epoch() -> str:
    """An epoch never used before (time and chance): one that disappeared (evicted) is never
    taken for an earlier one."""
    return f"{time.time_ns():x}{os.urandom(4).hex()}"


def _moves_epoch(op: Operation) -> bool:
    """Whether ``op`` may change what Customer.io holds of people memory cannot name."""
    return op.id_types != {"id"} and (isinstance(op, Identify) or op.kind in _FORGETTING)


def _epoch(workspace: str | None) -> str:
    """The workspace's memory epoch (see ``move_epochs``); a missing one starts anew."""
    client = _client()
    if client is None:
        return "0"
    key = _epoch_key(workspace)
    raw = client.get(key)
    if raw is None:  # first use, or evicted: what was remembered before is not trusted
        client.set(key, _new_epoch(), nx=True)
        raw = client.get(key)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _epoch_key(workspace: str | None) -> str:
    return _cache_key(f"django_cio:identify-epoch:{_site_hash(workspace)}")


_warned_no_redis = False


def _client() -> Any:
    """The cache's Redis client, or None (dedup off) when the cache is not Redis."""
    global _warned_no_redis
    client = redis_client(get_settings().cache)
    if client is not None:
        return client
    if not _warned_no_redis:
        _warned_no_redis = True
        logger.warning("customerio: identify dedup needs a Redis cache (CUSTOMERIO['CACHE']); "
                       "it is off, every identify is sent")
    return None


def _ttl() -> int:
    return max(1, math.ceil(get_settings().dedup_ttl))


def _count(cache: BaseCache, hits: int, misses: int) -> None:
    for key, amount in ((HITS_KEY, hits), (MISSES_KEY, misses)):
        if amount:
            try:
                cache.add(key, 0, timeout=None)
                cache.incr(key, amount)
            except Exception:  # counters are best effort
                return


def _hash(kind: str, text: str) -> str:
    secret = str(settings.SECRET_KEY).encode()
    return hmac.new(secret, f"{kind}\x00{text}".encode(), hashlib.sha256).hexdigest()[:16]


def _key(person: str, workspace: str | None, epoch: str) -> str:
    """Per Customer.io workspace (its site id), epoch and person, with the cache's key prefix
    and version: each workspace remembers what it has, whoever shares the cache."""
    secret = str(settings.SECRET_KEY).encode()
    site_id = get_settings(workspace or DEFAULT_WORKSPACE).site_id
    digest = hmac.new(secret, f"{site_id}\x00{person}".encode(), hashlib.sha256).hexdigest()
    return _cache_key(f"django_cio:identify:{digest}:{epoch}")


def _site_hash(workspace: str | None) -> str:
    site_id = get_settings(workspace or DEFAULT_WORKSPACE).site_id
    return _hash("s", str(site_id))


def _cache_key(name: str) -> str:
    return str(caches[get_settings().cache].make_key(name))
