"""Whether Customer.io accepts the configured credentials.

A 401 or 403 is not a fault of the ops in the request: the key was rotated or mistyped, and
every request will be refused until someone fixes the configuration. Dead-lettering each op
would turn a configuration slip into a replay chore for all traffic, so a refusal is a state
of the workspace instead: remembered in the cache (per site id and API key, so new credentials
start afresh), logged loudly, shown by ``cio_status`` and ``manage.py check``, counted in the
metrics. Meanwhile deliveries keep their ops (handed on with a wait, no retry counted) and one
delivery at a time probes Customer.io every ``PROBE_EVERY`` seconds; the first accepted request
clears the state and delivery resumes.

The cache holds no secret: the key is an HMAC of the credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches

from .conf import CIOSettings, get_settings

logger = logging.getLogger("django_cio")

REFUSING_STATUSES = (401, 403)
# Seconds between two attempts while the credentials are refused, and how long ops wait.
PROBE_EVERY = 30
HOLD_FOR = 60
_REMEMBER_FOR = 7 * 24 * 3600


def refusal(config: CIOSettings | None = None) -> dict[str, Any] | None:
    """``{"status": 401, "since": unix time}`` if Customer.io refuses these credentials."""
    config = config or get_settings()
    try:
        return caches[config.cache].get(_key(config))
    except Exception:  # a cache outage must not stop delivery
        return None


def may_probe(config: CIOSettings) -> bool:
    """Whether this delivery may try the refused credentials again (one every PROBE_EVERY)."""
    try:
        return bool(caches[config.cache].add(_key(config) + ":probe", 1, PROBE_EVERY))
    except Exception:
        return True


def refused(config: CIOSettings, status: int) -> None:
    """Remember that Customer.io refused the credentials, and say so loudly."""
    logger.error(
        "customerio: Customer.io refused the credentials (HTTP %s): check CUSTOMERIO['SITE_ID'] "
        "and ['API_KEY']. Nothing is sent or dead-lettered until they work; ops are kept and "
        "tried again every %s s.", status, PROBE_EVERY,
    )
    try:
        cache = caches[config.cache]
        cache.add(_key(config), {"status": status, "since": int(time.time())}, _REMEMBER_FOR)
        cache.set(_key(config) + ":probe", 1, PROBE_EVERY)  # this was the try: next one later
    except Exception as exc:
        logger.warning("customerio: cache unavailable (%s)", type(exc).__name__)


def accepted(config: CIOSettings) -> None:
    """Customer.io took a request: forget an earlier refusal."""
    try:
        caches[config.cache].delete_many([_key(config), _key(config) + ":probe"])
    except Exception as exc:
        logger.warning("customerio: cache unavailable (%s)", type(exc).__name__)
    logger.warning("customerio: Customer.io accepts the credentials again; delivery resumes")


def _key(config: CIOSettings) -> str:
    credentials = f"{config.site_id}\x00{config.api_key}".encode()
    digest = hmac.new(str(settings.SECRET_KEY).encode(), credentials, hashlib.sha256)
    return f"django_cio:refused:{digest.hexdigest()[:32]}"
