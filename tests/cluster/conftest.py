"""The cluster: the example project deployed across hosts (network namespaces) on one machine.

    broker   Redis (appendonly), behind a link of 10-25 ms each way, 1% loss
    limiter  Redis for the rate limit and identify dedup, behind the same kind of link
    db       a private PostgreSQL, started here from the machine's binaries
    api      the fake Track API (50 ms an answer, 429 above the limit)
    web      gunicorn serving the example project, and the load generator (cio_loadtest)
    worker1… ``celery worker`` as docs/delivery.md runs it, ``-c 2`` each

Each Django process gets its settings from the environment, as a deployment would. The
cluster is built once per module; tests reset the fake API and use persons of their own.
"""

from __future__ import annotations

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

import pytest
import requests

from bench.common import busiest_second
from tests.cluster.netns import Cluster, Host, unavailable

ROOT = Path(__file__).resolve().parents[2]
RATE_LIMIT = 10  # requests/s: low enough that the load binds it
LINK = ["--delay-ms", "10-25", "--loss", "0.01"]  # one way: 20-50 ms round trips
PATH = {"PATH": os.environ["PATH"]}
PG_BIN = Path(os.environ.get("CIO_PG_BIN", "/usr/local/bin"))

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _accepts(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


def _wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s")


class Deployment:
    """The running cluster, and what tests do with it."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster, self.workdir = cluster, workdir
        self.hosts = cluster.hosts
        api = self.hosts["api"].address
        self.api_url = f"http://{api}:8080"
        # Not CIO_TEST_RUN: these processes outlive single tests (see tests/conftest.py).
        base = {k: v for k, v in os.environ.items() if k != "CIO_TEST_RUN"}
        self.env = {
            **base,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "example_project")]),
            "DJANGO_SETTINGS_MODULE": "tests.cluster.settings",
            "DATABASE_URL": f"postgres://postgres@{self.hosts['db'].address}:5432/shop",
            "CELERY_BROKER_URL": f"redis://{self.hosts['broker'].address}:6379/0",
            "REDIS_URL": f"redis://{self.hosts['limiter'].address}:6379/0",
            "CUSTOMERIO_TRACK_URL": self.api_url, "CUSTOMERIO_EU_TRACK_URL": self.api_url,
            "CUSTOMERIO_APP_URL": self.api_url,
            "CLUSTER_RATE_LIMIT": f"{RATE_LIMIT}/s",
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def django(self, host: str, *args: str, timeout: float = 120) -> str:
        """``manage.py`` on a host; its output, or an error with it."""
        done = self.cluster.run(self.hosts[host], [sys.executable, "-m", "django", *args],
                                self._env(host), timeout=timeout)
        assert done.returncode == 0, f"{args[0]} on {host}: {done.stdout}{done.stderr}"
        return done.stdout

    def _env(self, host: str) -> dict[str, str]:
        return {**self.env, "DEMO_STATE_DIR": str(self.workdir / host)}

    def start_worker(self, name: str) -> None:
        self.workers[name] = self.cluster.start(
            self.hosts[name], name,
            [sys.executable, "-m", "celery", "-A", "example_project", "worker",
             "-Q", "customerio,customerio.eu", "--prefetch-multiplier", "1", "-c", "2",
             "-n", f"{name}@%h", "-l", "WARNING"], self._env(name))

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
             "--p95-ms", "1e9", "--p99-ms", "1e9"], self._env("web"))
        process.out = out  # type: ignore[attr-defined]
        return process

    # What arrived at the fake Track API, read as an operator would, over the network.
    def fake(self, what: str, **params: Any) -> Any:
        response = requests.get(f"{self.api_url}/_fake/{what}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset_fake(self) -> None:
        requests.post(f"{self.api_url}/_fake/reset", timeout=10).raise_for_status()

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
    data.mkdir()
    cluster.start(host, f"{host.name}-redis",
                  ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always", "--dir", str(data)], PATH)
    cluster.start(host, f"{host.name}-link",
                  [sys.executable, "-m", "tests.cluster.linkproxy", f"{host.address}:6379",
                   "127.0.0.1:6379", *LINK, "--seed", str(len(host.name))],
                  {**PATH, "PYTHONPATH": str(ROOT)})


def _start_postgres(cluster: Cluster, host: Host) -> Path:
    data = Path(tempfile.mkdtemp(prefix="cio-cluster-pg-"))  # postgres must reach it
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
    return data


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = unavailable()
    if reason:
        if os.environ.get("CIO_REQUIRE_CLUSTER"):
            pytest.fail(f"the cluster tests must run here, but {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(f"cio{os.getpid() % 100000}", workdir)
    pg_data = None
    try:
        for name in ("broker", "limiter", "db", "api", "web", "worker1", "worker2", "worker3"):
            cluster.add(name)
        deployment = Deployment(cluster, workdir)
        hosts = cluster.hosts
        _start_redis(cluster, hosts["broker"], workdir)
        _start_redis(cluster, hosts["limiter"], workdir)
        pg_data = _start_postgres(cluster, hosts["db"])
        cluster.start(hosts["api"], "api", [
            sys.executable, "-m", "django_cio.fakeserver", "--host", hosts["api"].address,
            "--port", "8080", "--site-id", "demo-site", "--api-key", "demo-key",
            "--site", "demo-eu-site:demo-eu-key:eu", "--latency-ms", "50",
            "--rate-limit", str(RATE_LIMIT)], deployment.env)
        for name, port in (("broker", 6379), ("limiter", 6379), ("db", 5432), ("api", 8080)):
            _wait_until(lambda name=name, port=port: _accepts(hosts[name].address, port), 60,
                        f"{name} listening")
        _wait_until(lambda: subprocess.run(
            ["psql", "-h", hosts["db"].address, "-U", "postgres", "-c", "CREATE DATABASE shop"],
            capture_output=True, check=False).returncode == 0, 30, "database created")
        deployment.django("web", "migrate", "--verbosity", "0")
        for name in ("worker1", "worker2", "worker3"):
            deployment.start_worker(name)
        yield deployment
    finally:
        cluster.close()
        if pg_data is not None:
            shutil.rmtree(pg_data, ignore_errors=True)
