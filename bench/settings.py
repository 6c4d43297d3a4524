"""Django settings of the benchmark workers, from the environment the benchmark sets."""

import json
import os

import dj_database_url

SECRET_KEY = "django-cio-bench"
USE_TZ = True
# "bench" registers auth users for backfills (bench/apps.py).
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_cio", "bench"]
DATABASES = {"default": dj_database_url.parse(
    os.environ.get("DATABASE_URL",
                   f"sqlite:///{os.environ.get('CIO_BENCH_DB', 'bench.sqlite3')}"))}
CACHES = {"default": {
    "BACKEND": "django_redis.cache.RedisCache",
    "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"),
    "KEY_PREFIX": os.environ.get("CIO_BENCH_PREFIX", "django-cio-bench"),
}}
CUSTOMERIO = {
    "SITE_ID": os.environ.get("CUSTOMERIO_SITE_ID", "fake-site-id"),
    "API_KEY": os.environ.get("CUSTOMERIO_API_KEY", "fake-api-key"),
    "TRACK_URL": os.environ.get("CUSTOMERIO_TRACK_URL"),
    "QUEUE": os.environ.get("CIO_BENCH_QUEUE", "customerio"),
    "RATE_LIMIT": os.environ.get("CIO_BENCH_RATE", "80/s"),
    # bench/transactional.py: the fake's App API (the limit is the default, 100/s).
    "APP_API_KEY": os.environ.get("CUSTOMERIO_APP_API_KEY", "fake-api-key-app"),
    "APP_URL": os.environ.get("CUSTOMERIO_APP_URL"),
    # bench/workspaces.py: more workspaces (JSON).
    "WORKSPACES": json.loads(os.environ.get("CIO_BENCH_WORKSPACES", "{}")),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
