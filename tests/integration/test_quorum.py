"""A RabbitMQ quorum queue drops a message redelivered more than its delivery limit: a drain
must never reject-requeue, however many drains meet a message back from a lost worker."""

import contextlib
import os
import signal
import subprocess
import sys

import kombu
import pytest

from django_cio.broker import drain as broker_drain
from django_cio.broker import messages
from django_cio.broker import publish as broker_publish
from django_cio.conf import get_settings
from django_cio.delivery.engine import deliver_messages
from django_cio.models import DeadLetter
from django_cio.operations import Event
from django_cio.tasks import deliver
from tests.celery_app import BROKERS
from tests.conftest import ROOT, _test_database_url, use_broker
from tests.integration.quorum_app import QUORUM_ARGUMENTS

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def quorum_queue(request):
    """A quorum queue of this test's own (delivery limit 2) that this process publishes to."""
    name = f"{get_settings().queue}-quorum"
    use_broker(BROKERS["rabbitmq"])
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        queue = kombu.Queue(name, queue_arguments=QUORUM_ARGUMENTS, durable=True)
        queue(connection.default_channel).declare()
        yield name
        broker_drain.reconnect()
        with contextlib.suppress(Exception):
            connection.default_channel.queue_delete(name)
    use_broker(BROKERS["rabbitmq"])
    use_broker(BROKERS["redis"])


def publish(queue: str, number: int) -> None:
    """A one-op ``deliver`` message carrying event ``number``, straight to ``queue`` (not
    declared again: Celery would declare it classic)."""
    op = Event(f"p{number}", "viewed", {"n": number}).to_dict()
    deliver.apply_async(([op],), queue=kombu.Queue(queue, no_declare=True),
                        exchange="", routing_key=queue, producer=broker_publish.producer())


def lose_a_worker_holding_one(queue: str) -> None:
    """Take the head message and drop the connection unacknowledged: it is redelivered."""
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        taken = kombu.Queue(queue, no_declare=True)(connection.default_channel).get()
        assert taken is not None and not taken.delivery_info["redelivered"]


def waiting(queue: str) -> int:
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count


def quorum_worker(queue: str, fake) -> subprocess.Popen:
    """A real worker process, its app declaring ``queue`` as users are told to."""
    env = {**os.environ, "CIO_TEST_QUEUE": queue, "DATABASE_URL": _test_database_url(),
           "CIO_TEST_BROKER": "rabbitmq", "CUSTOMERIO_TRACK_URL": fake.url,
           "CUSTOMERIO_SITE_ID": fake.site_id, "CUSTOMERIO_API_KEY": fake.api_key}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.quorum_app", "worker",
         "-Q", queue, "-c", "1", "-n", f"quorum-{os.getpid()}@%h", "-l", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, cwd=ROOT, start_new_session=True,
    )


def test_a_redelivered_message_meets_many_drains_and_is_still_delivered(
        quorum_queue, cio_fake, wait_for):
    publish(quorum_queue, 0)
    lose_a_worker_holding_one(quorum_queue)  # its delivery count is now 1 of 2
    for number in range(1, 5):  # four deliver tasks, each draining the queue
        publish(quorum_queue, number)
        drained = broker_drain.drain(quorum_queue, 500, 2000)
        deliver_messages(drained)
        broker_drain.settle(drained)
    # Each drain handed the one from the lost worker back (a confirmed copy, never a
    # reject) and delivered the message behind it, taken in the same round trip.
    assert waiting(quorum_queue) == 1
    worker = quorum_worker(quorum_queue, cio_fake)
    try:
        wait_for(lambda: len(cio_fake.store.events) == 5, timeout=60)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    assert sorted(event["data"]["n"] for event in cio_fake.store.events) == list(range(5))
    assert not DeadLetter.objects.exists()


def test_a_handed_back_copy_is_confirmed_and_marked_as_back_from_a_lost_worker(quorum_queue):
    publish(quorum_queue, 0)
    lose_a_worker_holding_one(quorum_queue)
    assert broker_drain.drain(quorum_queue, 500, 2000) == []
    with kombu.Connection(BROKERS["rabbitmq"]) as connection:
        copy = kombu.Queue(quorum_queue, no_declare=True)(connection.default_channel).get()
        assert copy is not None and not copy.delivery_info["redelivered"]
        assert messages.came_back(copy)
        assert copy.properties["delivery_mode"] == 2
        copy.ack()
