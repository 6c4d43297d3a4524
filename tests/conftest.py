import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import after_task_publish
from django.core.cache import caches

from django_cio import objects, segments
from django_cio.broker import outbox, publish
from django_cio.client import TrackClient
from django_cio.conf import get_settings
from django_cio.fakeserver import FakeTrackAPI
from django_cio.registry import registry
from tests.celery_app import BROKERS, app

ROOT = Path(__file__).resolve().parent.parent


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``dev.py test`` runs two workers), the test files that start
    worker processes, kill them or count requests per second run one test at a time, on one
    xdist worker: two of them at once on two cores would measure each other. The rest run
    beside them. (xdist's own ``--dist loadgroup`` marks are lost with pytest 9: it renames
    ``item._nodeid``, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    heavy = _heavy_files()

    class HeavyFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "heavy" if nodeid.partition("::")[0] in heavy else nodeid

    return HeavyFilesTogether(config, log)


def _heavy_files() -> set[str]:
    """Files under tests/reliability and tests/cluster, and those that start worker
    processes or a private Redis, or are marked slow."""
    signs = ("worker_process", "private_redis", "mark.slow")
    return {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
            if path.parent.name in ("reliability", "cluster")
            or any(sign in path.read_text() for sign in signs)}


@pytest.fixture
def fake() -> Iterator[FakeTrackAPI]:
    """A fake Track API on a free loopback port, stopped after the test."""
    with FakeTrackAPI() as server:
        yield server


@pytest.fixture
def track_client(fake: FakeTrackAPI) -> Iterator[TrackClient]:
    """A TrackClient pointed at ``fake``."""
    track = TrackClient(fake.site_id, fake.api_key, url=fake.url, timeout=5)
    yield track
    track.close()


def _processes_of_this_run() -> dict[int, str]:
    """Live processes (other than this one) started by this test run, found by the
    ``CIO_TEST_RUN`` they inherit, even those whose parent died: pid -> command line."""
    marker = f"\0CIO_TEST_RUN={os.environ['CIO_TEST_RUN']}\0".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in b"\0" + (proc / "environ").read_bytes():
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                # A zombie has no command line; multiprocessing's tracker lives as long as we do.
                if command and "multiprocessing.resource_tracker" not in command:
                    found[int(proc.name)] = command
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A worker (or a worker's relay thread) left running would take later tests' messages
    or relay their Outbox rows: fail the test that left it (and stop a process it left, so the
    rest of the run is not affected)."""
    yield
    relays = [thread for thread in threading.enumerate() if thread.name == "django-cio-relay"]
    assert not relays, "a worker's Outbox relay thread outlived the test"
    deadline = time.monotonic() + 10
    while (left := _processes_of_this_run()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


def _unacked_left() -> list[str]:
    """Messages of this run's queues a killed worker held: kombu would put them back on the
    queue after the visibility timeout, into a later test."""
    import redis

    if not BROKERS["redis"].startswith("redis"):
        return []  # the unit layer's memory:// broker
    client = redis.Redis.from_url(BROKERS["redis"])
    prefix = f"cio-tests-{os.environ['CIO_TEST_RUN']}"
    return [tag.decode() for tag, value in client.hgetall("unacked").items()
            if prefix.encode() in value]


@pytest.fixture(autouse=True)
def _no_message_left_unacked():
    yield
    left = _unacked_left()
    _forget_unacked(left)  # reported by this test only: the next ones start clean
    assert not left, f"unacked messages left behind: {left}"


def _forget_unacked(tags: list[str]) -> None:
    if tags:
        import redis

        client = redis.Redis.from_url(BROKERS["redis"])
        client.hdel("unacked", *tags)
        client.zrem("unacked_index", *tags)


@pytest.fixture(autouse=True)
def _broker_tried_first():
    """A broker a test made fail is not skipped in the next test (see SKIP_BROKER_FOR)."""
    yield
    outbox.try_broker_again()


@pytest.fixture(autouse=True)
def _forget_dedup_memory():
    """Each test starts with no identify remembered (only this run's keys are touched)."""
    yield
    with contextlib.suppress(Exception):
        caches["default"].delete_pattern("django_cio:*")


@pytest.fixture
def registrations():
    """Register freely in a test; the registry is put back afterwards."""
    customers, events = dict(registry.customers), {k: list(v) for k, v in registry.events.items()}
    object_models, relations = dict(objects.object_models), dict(segments.relations)
    yield registry
    for model in set(registry.customers) - set(customers):
        registry.unregister(model)  # and its delete signal
    registry.customers, registry.events = customers, events
    for model in set(objects.object_models) - set(object_models):
        objects.unregister_object(model)
    for relation in set(segments.relations.values()) - set(relations.values()):
        segments.unregister_segment(relation.model, relation.members)


@pytest.fixture
def companies(registrations):
    """Companies as objects of type 1, and employees as people by email who belong to theirs
    in a role (docs/objects.md's registrations)."""
    import django_cio
    from django_cio.operations import Person
    from tests.models import Company, Employee

    django_cio.register_object(Company, object_type_id=1, fields=["name", "plan"])

    @django_cio.register(Employee)
    class EmployeeCustomer(django_cio.Customer):
        fields = ["role"]

        def person_id(self, employee):
            return Person(email=employee.email)

        def relationships(self, employee):
            return [(employee.company, {"role": employee.role})] if employee.company else []

    return registrations


@pytest.fixture
def cio_fake(settings, fake: FakeTrackAPI) -> FakeTrackAPI:
    """``fake``, with CUSTOMERIO pointed at it (HTTP backend, its credentials)."""
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "TRACK_URL": fake.url,
                           "SITE_ID": fake.site_id, "API_KEY": fake.api_key,
                           "APP_URL": fake.url, "APP_API_KEY": fake.app_api_key}
    return fake


def use_broker(url: str) -> None:
    """Point the test Celery app (and this thread's django-cio producer) at ``url``."""
    app.conf.broker_url = url
    app.conf.broker_transport = None  # an in-process worker chose one for the last broker
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    publish.drop_producer()
    outbox.try_broker_again()


def purge_queue() -> None:
    """Empty the queue of every workspace the settings have."""
    with contextlib.suppress(Exception), app.connection_for_write() as connection:
        for workspace in get_settings().workspace_names:
            connection.default_channel.queue_purge(get_settings(workspace).queue)


@pytest.fixture(params=sorted(BROKERS))
def broker(request) -> Iterator[str]:
    """Each test using it runs once on Redis and once on RabbitMQ."""
    use_broker(BROKERS[request.param])
    purge_queue()
    yield request.param
    purge_queue()
    use_broker(BROKERS["redis"])


class Published(list):
    """The ops of each message; ``details`` has its kwargs and ETA (``None`` if sent now)."""

    def __init__(self) -> None:
        super().__init__()
        self.details: list[dict] = []


@pytest.fixture
def published() -> Iterator[Published]:
    """The ops of every ``deliver`` message published during the test, as Celery sent them.

    The queue is purged after the test, so tests without a worker leave nothing behind.
    """
    messages = Published()

    def record(sender=None, body=None, headers=None, **kwargs):
        if sender == "django_cio.tasks.deliver":
            args, task_kwargs, _ = body
            messages.append(args[0])
            messages.details.append({"kwargs": task_kwargs, "eta": headers.get("eta"),
                                     "routing_key": kwargs.get("routing_key"),
                                     "argsrepr": headers.get("argsrepr")})

    after_task_publish.connect(record, weak=False)
    yield messages
    after_task_publish.disconnect(record)
    purge_queue()


@pytest.fixture
def worker(cio_fake: FakeTrackAPI, settings: Any) -> Iterator[Any]:
    """A real Celery worker (in a thread) consuming django-cio's queues (every workspace's the
    settings have when it starts), delivering to the fake.

    What is queued before it starts is delivered; what is left when it stops is purged. It
    does not relay the Outbox (tests run the relay themselves; worker processes do relay)."""
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RELAY": False}
    queues = [get_settings(name).queue for name in get_settings().workspace_names]
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      queues=queues, loglevel="WARNING",
                      shutdown_timeout=30) as running:
        running.cio_fake = cio_fake
        yield running
    purge_queue()


@pytest.fixture
def wait_for():
    """``wait_for(condition)``: poll until ``condition()`` is true; fail after ``timeout`` s."""
    return _wait_for


def _wait_for(condition, timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on a free port, that a test may kill and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # An append-only file synced on every write, as a broker should be run: a Redis that
        # is killed and started again still has the messages it had accepted.
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL,
        )
        _wait_for(self._accepts, timeout=10)

    def _accepts(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung broker)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait()
            self.process = None


class TCPProxy:
    """A loopback TCP proxy to ``127.0.0.1:target``. ``black_hole()`` makes it swallow
    everything both ways while every connection stays open: a link that went dark without a
    FIN (a partition, a NAT or load balancer dropping the flow). Otherwise it behaves like the
    path to the server: a connection made while the server is down is refused (closed), and
    one whose other end closed is closed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dark = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def black_hole(self) -> None:
        self.dark.set()

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.dark.is_set():
                    sink.sendall(data)
        if not self.dark.is_set():  # a dark link stays open: no FIN
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tcp_proxy() -> Iterator[Any]:
    """``tcp_proxy(port)``: a ``TCPProxy`` to that loopback port, closed after the test."""
    proxies: list[TCPProxy] = []

    def start(target: int) -> TCPProxy:
        proxies.append(TCPProxy(target))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def dead_broker(private_redis: RedisServer) -> Iterator[RedisServer]:
    """The broker is a Redis that has just been killed."""
    use_broker(private_redis.url)
    private_redis.kill()
    yield private_redis
    use_broker(BROKERS["redis"])


def _test_database_url() -> str:
    """The URL of the test database pytest-django made, for worker processes."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}")


@pytest.fixture
def worker_process(cio_fake: FakeTrackAPI) -> Iterator[Any]:
    """``worker_process(queue=None)`` starts a real ``celery worker`` process (prefork, one
    child) for this test's database, fake server and queue (``"a,b"``: these queues, the
    first one django-cio's ``QUEUE``; ``env`` adds to its environment); all are stopped after
    the test."""
    started: list[subprocess.Popen] = []

    def start(queue: str | None = None, broker: str = "redis",
              env: dict[str, str] | None = None) -> subprocess.Popen:
        queue = queue or get_settings().queue
        env = {**os.environ, "CIO_TEST_QUEUE": queue.split(",")[0],
               "DATABASE_URL": _test_database_url(),
               "CIO_TEST_BROKER": broker,
               "CUSTOMERIO_TRACK_URL": cio_fake.url, "CUSTOMERIO_SITE_ID": cio_fake.site_id,
               "CUSTOMERIO_API_KEY": cio_fake.api_key, "CUSTOMERIO_APP_URL": cio_fake.url,
               "CUSTOMERIO_APP_API_KEY": cio_fake.app_api_key, **(env or {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-Q", queue,
             "-c", "1", "-n", f"test{len(started)}-{os.getpid()}@%h", "-l", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=ROOT, start_new_session=True,  # its own group, to kill it whole
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # A task still finishing when the test ended (acknowledging, remembering identifies) was
    # killed with its pool process: its message, unacknowledged, is moot now, and must not be
    # restored into a later test.
    _forget_unacked(_unacked_left())
