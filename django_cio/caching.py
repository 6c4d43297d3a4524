"""The Redis client behind a Django cache, for what needs more than the cache API (Lua scripts
for identify dedup and the shared rate limiter) with the cache's own credentials and options."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import caches


def redis_client(alias: str) -> Any:
    """The client of a django-redis or Django ``RedisCache`` cache; None for other caches (or a
    client that cannot give one, such as django-redis's sharded client)."""
    backend = settings.CACHES.get(alias, {}).get("BACKEND", "")
    try:
        if backend.startswith("django_redis."):
            from django_redis import get_redis_connection

            return get_redis_connection(alias, write=True)
        if backend == "django.core.cache.backends.redis.RedisCache":
            return caches[alias]._cache.get_client(write=True)  # type: ignore[attr-defined]
    except (NotImplementedError, ImportError, AttributeError):
        return None
    return None
