"""The benchmark's Celery app, configured as docs/delivery.md recommends."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("django_cio_bench")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15"),
    broker_transport_options={"visibility_timeout": 300},
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
)
app.autodiscover_tasks(["django_cio"])
