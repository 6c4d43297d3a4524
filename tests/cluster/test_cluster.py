"""The guarantees across a network: hosts in network namespaces (deployment.py), links to
the broker and the limiter 20-50 ms round trip with 1% loss, partitions with no FIN.

The web host drives the example project's load-test views (``cio_loadtest``: gunicorn and
Locust) while hosts are cut apart in turn, and what reached the fake Track API is judged:
every event once, no 1-second window over the limit, identify dedup shared by the worker
hosts. Once on Redis, once on RabbitMQ.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any

import psycopg
import pytest

from tests.cluster.conftest import RATE_LIMIT
from tests.cluster.deployment import Deployment, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = "warm-up"  # cio_loadtest's own person, not counted in its expected events
PARTITION = 8  # seconds: far below the Redis visibility timeout (300 s) and AMQP heartbeats


def _finished(load: Any, timeout: float = 240) -> dict[str, Any]:
    """The load test's summary of its requests, and the prefix of its persons' ids."""
    load.wait(timeout=timeout)
    log = (load.out.parent / f"{load.out.name}.log").read_text()
    assert load.returncode == 0, log[-3000:]
    summary = json.loads((load.out / "locust-summary.json").read_text())
    with (load.out / "loadtest.csv").open() as report:
        persons = next(row for row in csv.DictReader(report) if row["metric"] == "persons created")
    summary["prefix"] = persons["note"].removeprefix("ids ").removesuffix("*")
    return summary


def _events(deployment: Deployment, prefix: str, name: str | None = None) -> list[dict]:
    return [e for e in deployment.events(prefix)
            if not e["person"].endswith(WARM_UP) and name in (None, e["name"])]


def _all_arrived(deployment: Deployment, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The load's events at the fake, once they are all there (and a moment later, for any
    duplicate still on its way)."""
    wait_until(lambda: len(_events(deployment, summary["prefix"]))
               >= summary["expected_events"], 180, "every event delivered")
    time.sleep(3)
    return _events(deployment, summary["prefix"])


def _count(outbox: psycopg.Connection) -> int:
    return outbox.execute("SELECT count(*) FROM django_cio_outbox").fetchone()[0]


def _reidentify(deployment: Deployment, summary: dict[str, Any]) -> None:
    """Every person identified again, unchanged, one message each with an event of its own
    (which shows the message was delivered)."""
    deployment.django("web", "shell", "-c", (
        "from django.db import transaction; import django_cio\n"
        f"for n in range({summary['persons']}):\n"
        f"    person = '{summary['prefix']}' + f'{{n:05d}}'\n"
        "    with transaction.atomic():\n"
        "        django_cio.identify(person, email=f'{person}@example.invalid', "
        "first_name='Load')\n"
        "        django_cio.track(person, 'reidentified')\n"))
    wait_until(lambda: len(_events(deployment, summary["prefix"], "reidentified"))
               == summary["persons"], 90, "the re-identifies delivered")


def test_partitions_lose_nothing_duplicate_nothing_and_never_breach_the_limit(deployment):
    """Under load: a worker host cut from the broker while it holds messages, another cut
    from the limiter's Redis (the limit must hold: no process may fall back to a limit of its
    own), then the web host cut from the broker (requests go on, their ops to the Outbox);
    each for PARTITION seconds, each healed. Then every person is identified again: the
    worker hosts share what Customer.io already has."""
    deployment.reset_fake()
    hosts, cluster = deployment.hosts, deployment.cluster
    load = deployment.load("20:30")
    wait_until(lambda: deployment.fake("stats")["events"] > 20, 90, "the load flowing")

    for host, server in (("worker1", "broker"), ("worker2", "limiter")):
        cluster.partition(hosts[host], hosts[server])
        time.sleep(PARTITION)
        cluster.heal(hosts[host], hosts[server])

    outbox = psycopg.connect(deployment.env["DATABASE_URL"], autocommit=True)
    parked = 0
    cluster.partition(hosts["web"], hosts["broker"])
    try:
        deadline = time.monotonic() + PARTITION
        while time.monotonic() < deadline:
            parked = max(parked, _count(outbox))
            time.sleep(0.5)
    finally:
        cluster.heal(hosts["web"], hosts["broker"])
    summary = _finished(load)
    events = _all_arrived(deployment, summary)

    assert not summary["errors"], summary["errors"]
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids) == summary["expected_events"], (
        f"{len(events)} events ({len(set(ids))} ids) arrived of {summary['expected_events']}")
    assert deployment.busiest_second() <= RATE_LIMIT
    assert deployment.fake("stats")["rate_limited"] == 0
    # Requests stayed fast: a handful waited out the publish timeout (those in flight when
    # the link went dark, and one a process every SKIP_BROKER_FOR s), the rest went straight
    # to the Outbox. Before, every request during the partition waited 1-2 s.
    waited = (load.out / "gunicorn.log").read_text().count("customerio: broker unavailable")
    assert parked >= 4 * waited > 0, (parked, waited)
    wait_until(lambda: not _count(outbox), 30, "the Outbox relayed")

    identifies = deployment.fake("stats")["ops"]["identify"]
    _reidentify(deployment, summary)
    assert deployment.fake("stats")["ops"]["identify"] == identifies
    assert deployment.busiest_second() <= RATE_LIMIT
    # Each worker rode its partition out (on RabbitMQ one exited once the link healed).
    exited = [name for name, worker in deployment.workers.items() if worker.poll() is not None]
    assert not exited, f"workers that exited: {exited}; logs in {deployment.workdir}"
