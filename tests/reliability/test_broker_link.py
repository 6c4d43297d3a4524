"""A broker link that goes dark without a FIN: a publish counts only once the broker has it.

The proxy between this process and RabbitMQ starts swallowing traffic while every connection
stays open, as a partition or a NAT dropping an idle flow does. A publish written into the
socket buffer then "succeeds" unless the broker must confirm it.
"""

from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from django_cio.broker import outbox, relay
from django_cio.conf import get_settings
from django_cio.models import Outbox
from django_cio.operations import Event
from tests.celery_app import BROKERS, app
from tests.conftest import purge_queue, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def dark_link(tcp_proxy):
    """This process publishes to RabbitMQ through a proxy; the test turns it dark."""
    rabbitmq = urlsplit(BROKERS["rabbitmq"])
    proxy = tcp_proxy(rabbitmq.port or 5672)
    use_broker(rabbitmq._replace(netloc=f"{rabbitmq.netloc.rsplit(':', 1)[0]}:{proxy.port}")
               .geturl())
    purge_queue()
    yield proxy
    use_broker(BROKERS["rabbitmq"])
    purge_queue()
    use_broker(BROKERS["redis"])


def queued() -> int:
    """Messages on the queue, asked over a direct connection."""
    with app.connection_for_write(BROKERS["rabbitmq"]) as connection:
        return connection.default_channel.queue_declare(
            get_settings().queue, passive=True).message_count


def ops(name: str) -> list[dict]:
    return [Event("u1", name, {}).to_dict()]


def test_a_message_published_into_a_dark_link_goes_to_the_outbox(dark_link):
    assert outbox.publish_or_park(ops("before"))  # the cached connection, through the proxy
    dark_link.black_hole()
    assert outbox.publish_or_park(ops("while_dark"))
    assert [row.ops[0]["name"] for row in Outbox.objects.all()] == ["while_dark"]
    assert queued() == 1  # only "before" reached the broker


def test_the_relay_keeps_rows_it_could_not_publish_through_a_dark_link(dark_link):
    assert outbox.publish_or_park(ops("before"))
    dark_link.black_hole()
    Outbox.objects.create(ops=ops("parked"), not_before=timezone.now() - timedelta(seconds=1))
    assert relay.relay() == 0
    assert Outbox.objects.count() == 1
