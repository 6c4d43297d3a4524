"""Attacks on ``django_cio.broker.redis`` (the atomic-take Redis consumer).

Each test here failed when written (commit 96b0916); each names the break it shows. They use
private ``redis-server`` processes (``private_redis`` or their own), never the shared Redis.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import kombu
import pytest
import redis
from celery import Celery
from kombu.transport import TRANSPORT_ALIASES, _transport_cache

from django_cio.broker.publish import publish_ops
from django_cio.broker.redis import Transport, consume_atomically
from django_cio.conf import get_settings
from django_cio.operations import Event
from tests.celery_app import BROKERS
from tests.conftest import _wait_for, free_port, use_broker


def _drain(connection: kombu.Connection, received: list, count: int, limit: float) -> float:
    """drain_events until ``count`` messages arrived or ``limit`` s passed; the time taken."""
    started = time.monotonic()
    while len(received) < count and time.monotonic() - started < limit:
        with contextlib.suppress(TimeoutError, socket.timeout):
            connection.drain_events(timeout=0.5)
    return time.monotonic() - started


# -- 1. Only the first queue's base list is waited on: every other list drains at one take
#       (prefetch credit) per brpop_timeout. ---------------------------------------------

@pytest.mark.parametrize("where", ["second queue", "priority list"])
def test_a_backlog_outside_the_first_queues_base_list_is_consumed_promptly(
        private_redis, where):
    """Ten messages ready in the consumer's second queue (or sent with a priority to its one
    queue) take 10 s with prefetch 1, against ~0 s with kombu's BRPOP on every list: each
    take waits a whole BLMOVE timeout on the empty base list of the first queue first. The
    docs promise such a message waits "at most one brpop_timeout (1 s) longer"; the n-th waits
    n/credit seconds, so a backlog of 1,000 retries in a second queue needs ~17 min/worker."""
    first, second = kombu.Queue("first"), kombu.Queue("second", max_priority=9)
    received: list = []
    with kombu.Connection(private_redis.url, transport=Transport) as connection:
        queues = [first, second] if where == "second queue" else [second]
        with connection.Consumer(queues, callbacks=[
                lambda body, message: (received.append(body), message.ack())]) as consumer:
            consumer.qos(prefetch_count=1)
            with connection.Producer() as publisher:
                for number in range(10):
                    publisher.publish({"n": number}, routing_key="second",
                                      declare=[first, second],
                                      priority=5 if where == "priority list" else None)
            took = _drain(connection, received, 10, limit=20)
    assert len(received) == 10
    assert took < 3, f"10 ready messages took {took:.1f} s"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_on_two_queues_drains_the_second_promptly(
        private_redis, cio_fake, worker_process, settings):
    """The same with a real ``celery worker -Q customerio,other`` (prefork, one child,
    prefetch 1): ten deliveries queued on ``other`` while ``customerio`` is idle."""
    main = get_settings().queue
    other = f"{main}-other"
    use_broker(private_redis.url)
    try:
        worker_process(queue=f"{main},{other}",
                       env={"CIO_TEST_REDIS_BROKER": private_redis.url})
        publish_ops([Event("p", "warm", {"n": -1}).to_dict()])
        _wait_for(lambda: cio_fake.received >= 1, timeout=60)  # the worker is consuming
        settings.CUSTOMERIO = {**settings.CUSTOMERIO, "QUEUE": other}
        for number in range(10):
            publish_ops([Event("p", "other", {"n": number}).to_dict()])
        started = time.monotonic()
        _wait_for(lambda: len(cio_fake.store.events) >= 11, timeout=60)
        took = time.monotonic() - started
    finally:
        use_broker(BROKERS["redis"])
    assert took < 4, f"10 deliveries on the worker's second queue took {took:.1f} s"


# -- 2. Setting ``broker_transport`` drops what kombu derives from the URL's scheme. --------

@pytest.fixture
def tls_redis(tmp_path: Path):
    """A private Redis that only speaks TLS (self-signed), as managed rediss:// brokers do."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no",
         "--tls-cert-file", str(tmp_path / "cert.pem"),
         "--tls-key-file", str(tmp_path / "key.pem"), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        def accepts() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0
        _wait_for(accepts, timeout=10)
        yield f"rediss://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait()


@pytest.fixture(autouse=True)
def kombu_aliases():
    """``consume_atomically`` points kombu's aliases at the transport: put them back."""
    saved = dict(TRANSPORT_ALIASES)
    yield
    TRANSPORT_ALIASES.clear()
    TRANSPORT_ALIASES.update(saved)
    _transport_cache.clear()


def _worker_app(url: str) -> Celery:
    """A Celery app on ``url`` after ``worker_init`` ran ``consume_atomically`` on it."""
    app = Celery("attack", broker=url, set_as_current=False)
    app.conf.broker_connection_timeout = 3
    consume_atomically(type("Loader", (), {"app": app})())  # worker_init's sender: the loader
    return app


def test_a_worker_on_a_rediss_broker_without_ssl_options_still_connects(tls_redis):
    """kombu turns TLS on for the ``rediss`` scheme (``Connection._init_params``: transport
    == 'rediss' and no ssl options -> ssl_cert_reqs=CERT_NONE, with a warning). Once
    ``broker_transport`` is 'django_cio.broker.redis:Transport' that check no longer matches:
    the worker speaks plain TCP to the TLS port and never consumes (or, against a server that
    accepts both, sends its password in clear). Without ``consume_atomically`` it connects."""
    with kombu.Connection(tls_redis) as plain_kombu:  # control: kombu's own choice works
        plain_kombu.ensure_connection(max_retries=1)
    app = _worker_app(tls_redis)
    with app.connection_for_read() as connection:
        assert isinstance(connection.transport, Transport)
        connection.ensure_connection(max_retries=1)
        assert connection.default_channel.basic_get("anything") is None


def test_a_failover_keeps_consuming_atomically():
    """``broker_url = "redis://a;redis://b"``: kombu's ``Connection.switch`` (failover) sets
    the transport from the alternate URL's scheme, so after the first failover the worker is
    back on kombu's BRPOP consumer, with the loss window this transport closes."""
    app = _worker_app("redis://127.0.0.1:6379/14;redis://127.0.0.1:6379/15")
    connection = app.connection_for_read()
    try:
        assert isinstance(connection.transport, Transport)
        connection.maybe_switch_next()  # what ensure_connection does when a host is down
        assert isinstance(connection.transport, Transport)
    finally:
        connection.release()


# -- 3. The take records every message unacknowledged, even for a consumer that never acks. --

def test_a_no_ack_consumer_gets_each_message_once(private_redis):
    """``TAKE`` records what it takes for every consumer, but a ``no_ack=True`` consumer never
    appends to QoS nor acks: the record stays in ``unacked``, the tag stays in
    ``Channel.recorded`` (grows without bound), and after each visibility timeout the message
    is restored and delivered again, forever. (Celery's control replies, the rpc:// result
    backend and kombu's SimpleQueue(no_ack=True) consume that way.)"""
    options = {"visibility_timeout": 1, "unacked_restore_throttle": 1}
    received: list = []
    with kombu.Connection(private_redis.url, transport=Transport,
                          transport_options=options) as connection:
        queue = kombu.Queue("no-ack")
        with connection.Consumer([queue], no_ack=True, callbacks=[
                lambda body, message: received.append(body)]) as consumer:
            with connection.Producer() as publisher:
                publisher.publish({"n": 1}, routing_key="no-ack", declare=[queue])
            _drain(connection, received, 1, limit=5)
            time.sleep(1.5)  # past the visibility timeout
            _drain(connection, received, 2, limit=4)
            leaked = len(consumer.channel.recorded)
        left = redis.Redis.from_url(private_redis.url).hlen("unacked")
    assert received == [{"n": 1}]
    assert left == 0
    assert leaked == 0


# -- 4. A take is sized by ``can_consume_max_estimate``, not gated by ``can_consume``. --------

def test_worker_disable_prefetch_takes_one_message_at_a_time(private_redis):
    """Celery's ``worker_disable_prefetch`` (Redis only) wraps the task channel's
    ``qos.can_consume`` to refuse while every pool process has a reserved task (celery/worker/
    consumer/tasks.py), leaving prefetch_count as it was. kombu's consumer takes one message
    per read, so the gate holds; ``_brpop_read`` takes ``can_consume_max_estimate()`` messages
    in one script: here all four, which then wait behind the busy process instead of going to
    an idle worker (the option's whole point)."""
    from types import MethodType

    held: list = []  # a pool process busy with the first task: nothing acked
    with kombu.Connection(private_redis.url, transport=Transport) as connection:
        queue = kombu.Queue("no-prefetch")
        with connection.Consumer([queue], callbacks=[
                lambda body, message: held.append(message)]) as consumer:
            consumer.qos(prefetch_count=4)  # multiplier 4 x concurrency 1
            qos = consumer.channel.qos
            original = qos.can_consume

            def can_consume(self):  # as Celery wraps it: one pool process
                return len(held) < 1 and original()

            qos.can_consume = MethodType(can_consume, qos)
            with connection.Producer() as publisher:
                for number in range(4):
                    publisher.publish({"n": number}, routing_key="no-prefetch",
                                      declare=[queue])
            _drain(connection, held, 4, limit=3)
            taken = len(held)
            queued = redis.Redis.from_url(private_redis.url).llen("no-prefetch")
    assert (taken, queued) == (1, 3)


# -- 5. A full Redis (maxmemory, noeviction) refuses BLMOVE, a write; the take is allowed. ----

def test_a_full_redis_still_hands_out_what_it_holds(tmp_path):
    """Redis refuses write commands once it is over ``maxmemory`` with ``noeviction``, and
    ``BLMOVE`` is one (``BRPOP`` and the take script, which pops first, are not). A worker
    must still take what is queued (before the fix: an OutOfMemoryError on every poll)."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"

        def accepts() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        _wait_for(accepts, timeout=10)
        client = redis.Redis.from_url(url)
        received: list = []
        with kombu.Connection(url, transport=Transport) as connection:
            queue = kombu.Queue("full")
            with connection.Producer() as publisher:
                publisher.publish({"n": 1}, routing_key="full", declare=[queue])
            with connection.Consumer([queue], callbacks=[  # declared while there is room
                    lambda body, message: received.append(body)]):
                used = client.info("memory")["used_memory"]
                client.config_set("maxmemory", used + 4096)
                client.config_set("maxmemory-policy", "noeviction")
                with contextlib.suppress(redis.exceptions.ResponseError):  # fill it up
                    for number in range(10_000):
                        client.set(f"ballast:{number}", "x" * 1024)
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    client.lmove("full", "full", "RIGHT", "RIGHT")  # what the wait sends
                _drain(connection, received, 1, limit=10)
                client.config_set("maxmemory", 0)  # room again, to close cleanly
        assert received == [{"n": 1}]
    finally:
        server.kill()
        server.wait()
