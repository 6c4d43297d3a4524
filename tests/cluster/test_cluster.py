"""The guarantees across a network: hosts in network namespaces (see conftest.py), links to
the broker and the limiter 20-50 ms round trip with 1% loss, partitions with no FIN.

Each test drives the example project's load-test views from the web host (``cio_loadtest``
with gunicorn and Locust) and judges what reached the fake Track API: every event once, no
1-second window over the limit, identify dedup shared by the worker hosts.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any

import psycopg
import pytest
import redis

from tests.cluster.conftest import RATE_LIMIT, Deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = "warm-up"  # cio_loadtest's own person, not counted in its expected events


def _finished(load: Any, timeout: float = 240) -> dict[str, Any]:
    """The load test's summary of its requests (it exits 0: no breached limit)."""
    load.wait(timeout=timeout)
    log = (load.out.parent / f"{load.out.name}.log").read_text()
    assert load.returncode == 0, log[-3000:]
    summary = json.loads((load.out / "locust-summary.json").read_text())
    with (load.out / "loadtest.csv").open() as report:
        persons = next(row for row in csv.DictReader(report) if row["metric"] == "persons created")
    summary["prefix"] = persons["note"].removeprefix("ids ").removesuffix("*")
    return summary


def _arrived(deployment: Deployment, summary: dict[str, Any],
             timeout: float = 180) -> list[dict[str, Any]]:
    """The load's events at the fake, once they all are there (and a moment later, for any
    duplicate still on its way)."""
    prefix, expected = summary["prefix"], summary["expected_events"]

    def events() -> list[dict[str, Any]]:
        return [e for e in deployment.events(prefix) if not e["person"].endswith(WARM_UP)]

    deadline = time.monotonic() + timeout
    while len(events()) < expected and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)
    return events()


def _assert_each_event_once(events: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "an event id arrived twice as two events"
    assert len(events) == summary["expected_events"], (
        f"{len(events)} events arrived of {summary['expected_events']} made")


def _queues_empty(deployment: Deployment) -> bool:
    broker = redis.Redis.from_url(deployment.env["CELERY_BROKER_URL"])
    return not any(broker.llen(q) for q in ("customerio", "customerio.eu")) and \
        not broker.hlen("unacked")


def test_every_op_once_under_one_limit_and_dedup_shared_across_hosts(deployment):
    deployment.reset_fake()
    summary = _finished(deployment.load("30:12"))
    events = _arrived(deployment, summary)

    _assert_each_event_once(events, summary)
    assert deployment.busiest_second() <= RATE_LIMIT
    stats = deployment.fake("stats")
    assert stats["rate_limited"] == 0

    # Identify every person again, unchanged, one message each: the three worker hosts take
    # them in turn, and each must know what another host already sent.
    identifies = stats["ops"]["identify"]
    deployment.django("web", "shell", "-c", (
        "from django.db import transaction; import django_cio\n"
        f"for n in range({summary['persons']}):\n"
        f"    person = '{summary['prefix']}' + f'{{n:05d}}'\n"
        "    with transaction.atomic():\n"
        "        django_cio.identify(person, email=f'{person}@example.invalid', "
        "first_name='Load')\n"))
    wait_until(lambda: _queues_empty(deployment), 60, "the re-identifies delivered")
    assert deployment.fake("stats")["ops"]["identify"] == identifies


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.5)


def test_partitions_lose_nothing_and_never_breach_the_limit(deployment):
    """Mid-load: a worker host cut from the broker while it holds messages, another cut from
    the limiter's Redis, then the web host cut from the broker; each for a while, no FIN."""
    deployment.reset_fake()
    hosts, cluster = deployment.hosts, deployment.cluster
    load = deployment.load("20:30")
    wait_until(lambda: deployment.fake("stats")["events"] > 20, 90, "the load flowing")

    for host, server, seconds in (("worker1", "broker", 8), ("worker2", "limiter", 8)):
        cluster.partition(hosts[host], hosts[server])
        time.sleep(seconds)
        cluster.heal(hosts[host], hosts[server])

    outbox = psycopg.connect(deployment.env["DATABASE_URL"], autocommit=True)
    parked = 0
    cluster.partition(hosts["web"], hosts["broker"])
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            parked = max(parked, outbox.execute(
                "SELECT count(*) FROM django_cio_outbox").fetchone()[0])
            time.sleep(0.5)
    finally:
        cluster.heal(hosts["web"], hosts["broker"])
    summary = _finished(load)
    events = _arrived(deployment, summary)

    # Requests stayed fast: a handful waited out the publish timeout (those in flight when
    # the link went dark, and one a process every SKIP_BROKER_FOR s), the rest went straight
    # to the Outbox. Before, every request during the partition waited 1-2 s.
    waited = (load.out / "gunicorn.log").read_text().count("customerio: broker unavailable")
    assert parked >= 4 * waited > 0, (parked, waited)
    assert not summary["errors"], summary["errors"]
    _assert_each_event_once(events, summary)
    assert deployment.busiest_second() <= RATE_LIMIT
    wait_until(lambda: not outbox.execute(
        "SELECT count(*) FROM django_cio_outbox").fetchone()[0], 30, "the Outbox relayed")
