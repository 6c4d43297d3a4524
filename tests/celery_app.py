"""The Celery app of the test project, set up the way the docs tell users to."""

import os

from celery import Celery
from celery.signals import task_postrun
from django.db import connections

BROKERS = {
    "redis": os.environ.get("CIO_TEST_REDIS_BROKER", "redis://127.0.0.1:6379/14"),
    "rabbitmq": os.environ.get("CIO_TEST_AMQP_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
}

app = Celery("django_cio_tests")
app.conf.update(
    # Worker processes started by tests are told their broker through the environment.
    broker_url=BROKERS[os.environ.get("CIO_TEST_BROKER", "redis")],
    # As the docs recommend; reliability tests scale the timeout down through the environment.
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("CIO_TEST_VISIBILITY_TIMEOUT", 300)),
        **({"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
           if "CIO_TEST_VISIBILITY_TIMEOUT" in os.environ else {}),
    },
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    control_queue_exclusive=False,  # check W006
    # The worker loop wakes at each AMQP heartbeat check: a short one lets test workers stop
    # within a second instead of ten.
    broker_heartbeat=2,
    # A project-wide time limit, as some projects set (reliability tests choose one).
    task_time_limit=int(os.environ.get("CIO_TEST_TIME_LIMIT", 0)) or None,
)
app.set_default()


@task_postrun.connect
def close_connections(**kwargs):
    # Worker threads must not keep connections to the test database open past the test.
    connections.close_all()
