"""The test Celery app with django-cio's queue declared as a RabbitMQ quorum queue, as the
docs tell users to (a worker declaring it as a classic queue would be refused)."""

import os

from kombu import Queue

from tests.celery_app import app

QUORUM_ARGUMENTS = {"x-queue-type": "quorum", "x-delivery-limit": 2}

if "CIO_TEST_QUEUE" in os.environ:  # a worker process; tests import only the arguments
    app.conf.task_queues = [Queue(os.environ["CIO_TEST_QUEUE"],
                                  queue_arguments=QUORUM_ARGUMENTS)]
