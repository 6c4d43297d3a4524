"""Settings for django-cio's own tests.

Services come from the environment, defaulting to the local ones: PostgreSQL as the postgres
user (trust auth) and Redis DB 13 (12 for pytest-xdist's second worker) with a key prefix
of its own. ``DATABASE_URL=sqlite:///...`` runs the suite on SQLite, the embedded default.
"""

import json
import os
import tempfile

import dj_database_url

SECRET_KEY = "django-cio-tests"
# One id per test run and pytest-xdist worker, shared with the worker processes it starts:
# queues, databases and cache keys of their own, apart from other runs and xdist workers.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
RUN = os.environ.get("CIO_TEST_RUN") or str(os.getpid())
if not RUN.endswith(XDIST_WORKER):
    RUN += XDIST_WORKER
os.environ["CIO_TEST_RUN"] = RUN
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_cio",
    "tests",
]
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/django_cio")
    )
}
# A test database per run too: two runs on one machine must not drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{RUN}"}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not the shared in-memory database, so threads (relays, workers) lock like
    # processes do; IMMEDIATE so a transaction that will write waits instead of failing.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"django_cio_tests_{os.getpid()}.sqlite3")
    }
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
# A second alias on the same database, as a replica or a sharded setup would have. django-cio's
# tables live only in "default" (see tests/routers.py).
DATABASES["other"] = {**DATABASES["default"], "TEST": {"MIRROR": "default"}}
DATABASE_ROUTERS = ["tests.routers.CustomerIOTablesOnDefault"]
# A Redis database per xdist worker (13, 12, ...): the limiter, dedup and outage keys of one
# workspace have the same name in every run.
REDIS_URL = os.environ.get(
    "REDIS_URL", f"redis://127.0.0.1:6379/{13 - int(XDIST_WORKER.removeprefix('gw') or 0)}"
)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        # A prefix per run: runs on one machine must not see each other's dedup memory.
        "KEY_PREFIX": f"django-cio-tests-{RUN}",
    }
}
CUSTOMERIO = {
    # A queue of this run's own: test runs on one machine must not take each other's messages.
    "QUEUE": os.environ.get("CIO_TEST_QUEUE", f"cio-tests-{RUN}"),
    "SITE_ID": os.environ.get("CUSTOMERIO_SITE_ID", "test-site"),
    "API_KEY": os.environ.get("CUSTOMERIO_API_KEY", "test-key-never-logged"),
    # Tests that send start a fake server and point this at it.
    "TRACK_URL": os.environ.get("CUSTOMERIO_TRACK_URL", "http://127.0.0.1:9"),
    "APP_API_KEY": os.environ.get("CUSTOMERIO_APP_API_KEY", "test-app-key-never-logged"),
    "APP_URL": os.environ.get("CUSTOMERIO_APP_URL", "http://127.0.0.1:9"),
    # Logins made by fixtures (admin_client) would add messages to unrelated tests; the tests
    # of the auth signals turn them on.
    "AUTH_SIGNALS": False,
    # Worker processes of reliability tests may be given other settings (JSON).
    **json.loads(os.environ.get("CIO_TEST_CUSTOMERIO", "{}")),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_cio.middleware.CustomerIOMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

import tests.celery_app  # noqa: E402,F401 - like a project's proj/__init__.py
