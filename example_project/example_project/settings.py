"""Settings from the environment (12-factor), defaulting to an embedded setup with no servers:
SQLite, a broker and a cache in files under ``.demo/``, and the bundled fake Track API."""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("DEMO_STATE_DIR", BASE_DIR / ".demo"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django_cio", "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_cio.middleware.CustomerIOMiddleware",
]
ROOT_URLCONF = "example_project.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": dj_database_url.parse(
    os.environ.get("DATABASE_URL", f"sqlite:///{STATE_DIR / 'shop.sqlite3'}")
)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL")
CACHES = {"default": (
    {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS_URL} if REDIS_URL else
    # Shared by the web and worker processes (redelivery counts, refused credentials).
    {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
     "LOCATION": str(STATE_DIR / "cache")}
)}

# Celery: a broker in files by default (kombu's filesystem transport crosses processes). For
# the demo only: under load it can read a message file before it is written, and lose it. In
# production use Redis (with appendonly yes) or RabbitMQ.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "data_folder_in": str(STATE_DIR / "broker"), "data_folder_out": str(STATE_DIR / "broker"),
        "control_folder": str(STATE_DIR / "control"),
    }
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# RabbitMQ: a worker cut from the broker reconnects instead of exiting (check W006).
CELERY_CONTROL_QUEUE_EXCLUSIVE = False

CUSTOMERIO = {
    "SITE_ID": os.environ.get("CUSTOMERIO_SITE_ID", "demo-site"),
    "API_KEY": os.environ.get("CUSTOMERIO_API_KEY", "demo-key"),
    "REGION": os.environ.get("CUSTOMERIO_REGION", "us"),
    "TRACK_URL": os.environ.get("CUSTOMERIO_TRACK_URL"),
    # Transactional mail (the welcome email) goes through Customer.io's App API.
    "APP_API_KEY": os.environ.get("CUSTOMERIO_APP_API_KEY", "demo-app-key"),
    "APP_URL": os.environ.get("CUSTOMERIO_APP_URL"),
    "REDIS_URL": REDIS_URL,
    "PAGE_VIEWS": True,
    # Identify dedup keeps its memory in Redis (atomic scripts): off with the cache in files.
    "DEDUP_TTL": 300 if REDIS_URL else 0,
    # The shop's European customers live in a workspace of their own, in the EU region (see
    # shop/customerio.py for who goes there). Its queue is "customerio.eu".
    "WORKSPACES": {"eu": {
        "SITE_ID": os.environ.get("CUSTOMERIO_EU_SITE_ID", "demo-eu-site"),
        "API_KEY": os.environ.get("CUSTOMERIO_EU_API_KEY", "demo-eu-key"),
        "REGION": "eu",
        "TRACK_URL": os.environ.get("CUSTOMERIO_EU_TRACK_URL"),
    }},
}
# Django's email (send_mail) as Customer.io transactional messages, through the same queue.
EMAIL_BACKEND = "django_cio.mail.EmailBackend"
DEFAULT_FROM_EMAIL = "Example Shop <shop@example.com>"

for folder in (STATE_DIR, STATE_DIR / "broker", STATE_DIR / "cache"):
    folder.mkdir(parents=True, exist_ok=True)
