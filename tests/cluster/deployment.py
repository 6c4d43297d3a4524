"""The example project deployed across hosts (network namespaces, ``netns``) on one machine,
for the cluster tests (``tests/cluster``) and the scale-out benchmark (``bench/cluster.py``):

    broker   Redis (appendonly) or RabbitMQ, behind a link of 10-25 ms each way, 1% loss
    limiter  Redis for the rate limit and identify dedup, behind the same kind of link
    db       a private PostgreSQL, started here from the machine's binaries
    api      the fake Track API (50 ms an answer, 429 above the limit)
    web      gunicorn serving the example project, and the load generator (cio_loadtest)
    worker1… ``celery worker`` as docs/delivery.md runs it, ``-c 2`` each

Each Django process gets its settings from the environment, as a deployment would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import busiest_second
from tests.cluster.netns import Cluster, Host, tag

ROOT = Path(__file__).resolve().parents[2]
LINK = ["--delay-ms", "10-25", "--loss", "0.01"]  # one way: 20-50 ms round trips
PATH = {"PATH": os.environ["PATH"]}
PG_BIN = Path(os.environ.get("CIO_PG_BIN", "/usr/local/bin"))
BROKERS = {"redis": "redis://{}:6379/0", "rabbitmq": "amqp://guest:guest@{}:5672//"}
WORKERS = ("worker1", "worker2", "worker3")


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return result


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _accepts(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


class Deployment:
    """The running cluster, and what tests and benchmarks do with it."""

    def __init__(self, cluster: Cluster, workdir: Path, broker_url: str, rate_limit: int) -> None:
        self.cluster, self.workdir, self.rate_limit = cluster, workdir, rate_limit
        self.hosts = cluster.hosts
        self.api_url = f"http://{self.hosts['api'].address}:8080"
        # Not CIO_TEST_RUN: these processes outlive single tests (see tests/conftest.py).
        base = {k: v for k, v in os.environ.items() if k != "CIO_TEST_RUN"}
        self.env = {
            **base,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "example_project")]),
            "DJANGO_SETTINGS_MODULE": "tests.cluster.settings",
            "DATABASE_URL": f"postgres://postgres@{self.hosts['db'].address}:5432/shop",
            "CELERY_BROKER_URL": broker_url,
            "REDIS_URL": f"redis://{self.hosts['limiter'].address}:6379/0",
            "CUSTOMERIO_TRACK_URL": self.api_url, "CUSTOMERIO_EU_TRACK_URL": self.api_url,
            "CUSTOMERIO_APP_URL": self.api_url,
            "CLUSTER_RATE_LIMIT": f"{rate_limit}/s",
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def host_env(self, host: str, **extra: str) -> dict[str, str]:
        return {**self.env, "DEMO_STATE_DIR": str(self.workdir / host), **extra}

    def django(self, host: str, *args: str, timeout: float = 120, **env: str) -> str:
        """``manage.py`` on a host; its output, or an error with it."""
        done = self.cluster.run(self.hosts[host], [sys.executable, "-m", "django", *args],
                                self.host_env(host, **env), timeout=timeout)
        assert done.returncode == 0, f"{args[0]} on {host}: {done.stdout}{done.stderr}"
        return done.stdout

    def start_worker(self, name: str, **env: str) -> None:
        self.workers[name] = self.cluster.start(
            self.hosts[name], name,
            [sys.executable, "-m", "celery", "-A", "example_project", "worker",
             "-Q", "customerio,customerio.eu", "--prefetch-multiplier", "1", "-c", "2",
             "-n", f"{name}@%h", "-l", "WARNING"], self.host_env(name, **env))

    def stop_workers(self) -> None:
        for name in list(self.workers):
            self.cluster.stop(self.workers.pop(name), timeout=30)

    def load(self, stages: str) -> subprocess.Popen[bytes]:
        """``cio_loadtest`` on the web host: gunicorn serving the example project there and
        Locust driving its load-test views; the cluster's workers deliver."""
        out = self.workdir / f"loadtest-{uuid.uuid4().hex[:6]}"
        out.mkdir()
        process = self.cluster.start(
            self.hosts["web"], out.name,
            [sys.executable, "-m", "django", "cio_loadtest", "--no-workers", "--stages", stages,
             "--track-url", self.api_url, "--allow-real-customerio", "--out", str(out),
             "--drain-timeout", "1",
             # Timing is reported (docs/deploy.md), not judged: never a wall-clock verdict.
             "--p95-ms", "1e9", "--p99-ms", "1e9"], self.host_env("web"))
        process.out = out  # type: ignore[attr-defined]
        return process

    # What arrived at the fake Track API, read as an operator would, over the network.
    def fake(self, what: str, **params: Any) -> Any:
        response = requests.get(f"{self.api_url}/_fake/{what}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset_fake(self, **config: Any) -> None:
        """Forget what arrived; ``config``: new faults (``rate_limit=...``), every site."""
        requests.post(f"{self.api_url}/_fake/reset", timeout=10).raise_for_status()
        for site in ("demo-site", "demo-eu-site") if config else ():
            requests.post(f"{self.api_url}/_fake/config", params={"site": site}, json=config,
                          timeout=10).raise_for_status()

    def events(self, prefix: str) -> list[dict[str, Any]]:
        return [e for e in self.fake("events") if str(e["person"]).startswith(prefix)]

    def busiest_second(self) -> int:
        """The most Track API requests the fake received in any sliding 1-second window."""
        times = sorted(r["at"] for r in self.fake("requests", limit=100_000)
                       if not r["path"].startswith("/_fake/"))
        return busiest_second(times)


def _start_redis(cluster: Cluster, host: Host, workdir: Path) -> None:
    """Redis on the host's loopback, reached from the subnet through a slow, lossy link."""
    data = workdir / host.name
    data.mkdir(exist_ok=True)
    cluster.start(host, f"{host.name}-redis",
                  ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)], PATH)
    _link(cluster, host, 6379)


def _start_rabbitmq(cluster: Cluster, host: Host) -> None:
    """RabbitMQ on the host's loopback (the packaged server: it runs as its own user, so its
    files live where that user can write), reached through the same kind of link."""
    data = Path(tempfile.mkdtemp(prefix="cio-cluster-rabbitmq-"))
    cluster.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
    (data / "rabbitmq.conf").write_text("loopback_users = none\n"
                                        "listeners.tcp.default = 127.0.0.1:5672\n")
    (data / "enabled_plugins").write_text("[].\n")
    shutil.chown(data, "rabbitmq")
    cluster.start(host, f"{host.name}-rabbitmq", ["rabbitmq-server"], {
        **PATH, "RABBITMQ_NODENAME": "rabbit@localhost", "RABBITMQ_MNESIA_BASE": f"{data}/mnesia",
        "RABBITMQ_LOG_BASE": f"{data}/log", "RABBITMQ_CONFIG_FILE": f"{data}/rabbitmq.conf",
        "RABBITMQ_ENABLED_PLUGINS_FILE": f"{data}/enabled_plugins"})
    _link(cluster, host, 5672)


def _link(cluster: Cluster, host: Host, port: int) -> None:
    """The host's service, on its loopback, to the subnet through ``linkproxy``."""
    cluster.start(host, f"{host.name}-link",
                  [sys.executable, "-m", "tests.cluster.linkproxy", f"{host.address}:{port}",
                   f"127.0.0.1:{port}", *LINK, "--seed", str(port + len(host.name))],
                  {**PATH, "PYTHONPATH": str(ROOT)})


def _start_postgres(cluster: Cluster, host: Host) -> None:
    data = Path(tempfile.mkdtemp(prefix="cio-cluster-pg-"))  # postgres must reach it
    cluster.cleanups.append(lambda: shutil.rmtree(data, ignore_errors=True))
    shutil.chown(data, "postgres")
    init = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",
                           str(data / "data"), "-A", "trust", "-U", "postgres", "--no-sync"],
                          capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stdout + init.stderr
    with (data / "data" / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {cluster.subnet} trust\n")
    cluster.start(host, "db-postgres",
                  [str(PG_BIN / "postgres"), "-D", str(data / "data"), "-p", "5432",
                   "-c", f"listen_addresses={host.address}",
                   "-c", f"unix_socket_directories={data}", "-c", "fsync=off",
                   "-c", "max_connections=200"], PATH, user="postgres")


@contextlib.contextmanager
def deployed(broker: str, workdir: Path, rate_limit: int,
             workers: tuple[str, ...] = WORKERS) -> Iterator[Deployment]:
    """The cluster up, migrated, with ``workers`` running; everything stopped and deleted
    on exit."""
    cluster = Cluster(tag(), workdir)
    try:
        for name in ("broker", "limiter", "db", "api", "web", *WORKERS):
            cluster.add(name)
        hosts = cluster.hosts
        broker_url = BROKERS[broker].format(hosts["broker"].address)
        deployment = Deployment(cluster, workdir, broker_url, rate_limit)
        if broker == "redis":
            _start_redis(cluster, hosts["broker"], workdir)
        else:
            _start_rabbitmq(cluster, hosts["broker"])
        _start_redis(cluster, hosts["limiter"], workdir)
        _start_postgres(cluster, hosts["db"])
        cluster.start(hosts["api"], "api", [
            sys.executable, "-m", "django_cio.fakeserver", "--host", hosts["api"].address,
            "--port", "8080", "--site-id", "demo-site", "--api-key", "demo-key",
            "--site", "demo-eu-site:demo-eu-key:eu", "--latency-ms", "50",
            "--rate-limit", str(rate_limit)], deployment.env)
        for name, port in (("db", 5432), ("api", 8080)):
            wait_until(lambda name=name, port=port: _accepts(hosts[name].address, port), 60,
                       f"{name} listening")
        # Redis and the broker answer through their links at once: ask them.
        limiter = redis.Redis.from_url(deployment.env["REDIS_URL"], socket_timeout=2)
        wait_until(lambda: _answers(limiter), 60, "the limiter's Redis answering")
        wait_until(lambda: subprocess.run(
            ["psql", "-h", hosts["db"].address, "-U", "postgres", "-c", "CREATE DATABASE shop"],
            capture_output=True, check=False).returncode == 0, 30, "database created")
        deployment.django("web", "migrate", "--verbosity", "0")
        deployment.django("web", "shell", "-c", "from example_project.celery import app; "
                          "app.connection_for_write().ensure_connection("
                          "max_retries=60, interval_start=0.5, interval_max=1)")
        for name in workers:
            deployment.start_worker(name)
        yield deployment
    finally:
        cluster.close()
