"""Two workspaces on the same workers: throughput, each one's limit, and failure isolation.

    python bench/workspaces.py [--rate 2/s] [--latency-ms 50] [--messages 3000]
                               [--processes 4] [--isolation-rate 80/s]

Workers are real ``celery worker`` processes run as docs/workspaces.md shows for shared
workers (two, each ``-Q <queue>,<queue>.eu --prefetch-multiplier 1 -c 4``); one fake Track
API serves both workspaces as sites of their own, each answering after ``--latency-ms``.

1. Throughput: ``--messages`` messages of 10 ops are queued for the default workspace alone,
   then drained by workers started for it, and timed; then as many for each of the two
   workspaces, drained together. Each workspace is limited to ``--rate``, low enough that
   the limit, not the machine, sets the pace: together they should deliver about twice one
   alone, and each site's busiest second of requests must stay within its limit.
2. Isolation, at ``--isolation-rate`` (the default limit): 10 events a second to each
   workspace; the default workspace's p95 delivery lag (from the call to the fake's arrival)
   before, and while the EU workspace's API answers 503 to everything or times out every
   request (a black hole): the ratio is the figure.

The baseline, measured in the same run against the same server, is the official
``customerio`` SDK sending one op per request, serially.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKER = "redis://127.0.0.1:6379/15"
OPS_EACH = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="2/s", help="each workspace's RATE_LIMIT")
    parser.add_argument("--isolation-rate", default="80/s",
                        help="each workspace's RATE_LIMIT while lags are measured")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--messages", type=int, default=3000,
                        help="messages of 10 ops queued per workspace")
    parser.add_argument("--processes", type=int, default=4,
                        help="pool processes of each of the 2 workers, -c (default 4)")
    parser.add_argument("--outage-seconds", type=float, default=20)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="cio-bench-"))
    eu = {"SITE_ID": f"bench-eu-{run}", "API_KEY": "fake-api-key", "REGION": "eu",
          "RATE_LIMIT": args.rate}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "bench.settings",
           "CELERY_BROKER_URL": BROKER, "CIO_BENCH_QUEUE": f"bench-{run}",
           "CIO_BENCH_DB": str(workdir / "bench.sqlite3"), "CIO_BENCH_PREFIX": f"bench-{run}",
           "CIO_BENCH_RATE": args.rate, "CUSTOMERIO_SITE_ID": f"bench-{run}"}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    from django_cio.fakeserver import FakeTrackAPI

    with FakeTrackAPI(schemas=False, site_id=env["CUSTOMERIO_SITE_ID"],
                      latency_ms=args.latency_ms) as fake:
        us_site = fake.primary
        eu_site = fake.add_site(eu["SITE_ID"], eu["API_KEY"], region="eu",
                                latency_ms=args.latency_ms)
        env["CUSTOMERIO_TRACK_URL"] = os.environ["CUSTOMERIO_TRACK_URL"] = fake.url
        env["CIO_BENCH_WORKSPACES"] = os.environ["CIO_BENCH_WORKSPACES"] = json.dumps(
            {"eu": {**eu, "TRACK_URL": fake.url}})
        django.setup()
        from common import busiest_second, emit, figure, output, serial_rate
        from customerio import CustomerIO
        from django.core.management import call_command

        from bench.celery_app import app
        from django_cio.broker import publish
        from django_cio.conf import get_settings, parse_rate
        from django_cio.operations import Event

        call_command("migrate", verbosity=0)
        queues = [get_settings(name).queue for name in ("default", "eu")]

        def queue(workspace: str, count: int) -> None:
            for number in range(count):
                publish.publish_ops([Event(f"{workspace}-{number}", "viewed_item", {"i": step},
                                           workspace=workspace).to_dict()
                                     for step in range(OPS_EACH)])

        def drained(sites: list[object], total: int) -> float:
            """Seconds the workers, started once the messages wait, take to deliver them."""
            with _workers(env, queues, args.processes, workdir):
                return _drain(sites, total)

        arrivals = {name: _arrivals(site) for name, site in (("default", us_site),
                                                              ("eu", eu_site))}
        total = args.messages * OPS_EACH
        queue("default", args.messages)
        alone = total / drained([us_site], total)
        us_site.store.reset()
        arrivals["default"].clear()
        queue("default", args.messages)
        queue("eu", args.messages)
        both = 2 * total / drained([us_site, eu_site], total)
        busiest = {name: busiest_second(sorted(times)) for name, times in arrivals.items()}
        at_rate = {**env, "CIO_BENCH_RATE": args.isolation_rate, "CIO_BENCH_WORKSPACES":
                   json.dumps({"eu": {**eu, "TRACK_URL": fake.url,
                                      "RATE_LIMIT": args.isolation_rate}})}
        with _workers(at_rate, queues, args.processes, workdir):
            lags = _isolation(us_site, eu_site, args.outage_seconds)
        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        sdk_rate = serial_rate(lambda n: sdk.track(f"sdk-{n}", "viewed_item", {"i": n}), 3)

    with app.connection_for_write() as connection:
        for name in queues:
            connection.default_channel.queue_delete(name)
    limit = parse_rate(args.rate).per_second
    out = output(args.json)
    print(f"2 workspaces, each limited to {args.rate} ({args.isolation_rate} for the lags); "
          f"2 workers x -c {args.processes} serving both queues; "
          f"fake server {args.latency_ms:.0f} ms; messages of {OPS_EACH} ops", file=out)
    print(f"  one workspace alone: {alone:,.0f} ops/s; both together: {both:,.0f} ops/s "
          f"({both / alone:.2f}x one); busiest 1-s window {busiest['default']} and "
          f"{busiest['eu']} requests (limit {limit:g} each)", file=out)
    for outage, (before, during) in lags.items():
        print(f"  EU API {outage}: default workspace's p95 lag {before * 1000:.0f} ms before, "
              f"{during * 1000:.0f} ms during ({during / before:.2f}x)", file=out)
    print(f"  SDK serial: {sdk_rate:,.1f} ops/s -> two workspaces together "
          f"{both / sdk_rate:,.0f}x", file=out)
    if args.json:
        figures = [
            figure("workspaces", f"2 workspaces x {args.rate}: ops/s together", both, "ops/s",
                   baseline=sdk_rate, ratio=both / sdk_rate, target="~ 2x one workspace",
                   met=both >= 1.8 * alone, note=f"{both / alone:.2f}x one alone ({alone:,.0f})"),
            *[figure("workspaces", f"{name}'s busiest 1-s window", count, "requests",
                     target=f"<= its limit {limit:g}", met=count <= limit)
              for name, count in busiest.items()],
            *[figure("workspaces", f"healthy p95 lag, other's API {outage}", during * 1000, "ms",
                     target="unchanged", met=during <= 2 * before + 0.05,
                     note=f"{during / before:.2f}x the {before * 1000:.0f} ms before")
              for outage, (before, during) in lags.items()],
        ]
        emit(figures, ops_alone=alone, ops_both=both, busiest=busiest,
             lags={outage: list(pair) for outage, pair in lags.items()},
             sdk_ops_per_second=sdk_rate)


def _arrivals(site: object) -> list[float]:
    """The moments Track API requests reach ``site`` (when the fake takes them up)."""
    times: list[float] = []
    arrived = site.arrived  # type: ignore[attr-defined]

    def stamp() -> None:
        times.append(time.time())
        arrived()

    site.arrived = stamp  # type: ignore[attr-defined]
    return times


def _isolation(healthy: object, broken: object, outage_seconds: float) -> dict[str, tuple]:
    """The healthy workspace's p95 lag before and during each kind of outage of the other."""
    import django_cio

    results = {}
    _traffic(django_cio, 3, -1000)  # the workers are up and warm
    time.sleep(3)
    for outage, fault in (("answering 503", {"error_rate": 1.0}),
                          ("not answering", {"latency_ms": 60_000})):
        for site in (healthy, broken):
            site.store.reset()
        before = _traffic(django_cio, 5, 0)
        broken.configure(**fault)  # type: ignore[attr-defined]
        # The first requests into a black hole hold their workers for TIMEOUT (10 s), until
        # the workspace is marked as not answering: the figure is measured after that.
        _traffic(django_cio, 12 if "not" in outage else 0, before.stop)
        during = _traffic(django_cio, outage_seconds, before.stop + 10_000)
        time.sleep(2)
        results[outage] = (_p95(healthy, before), _p95(healthy, during))
        broken.configure(error_rate=0.0, latency_ms=50)  # type: ignore[attr-defined]
        time.sleep(15)  # the retries of the outage go out
    return results


def _traffic(django_cio: object, seconds: float, start: int) -> range:
    """10 events a second to each workspace; their numbers."""
    numbers = range(start, start + int(seconds * 10))
    began = time.monotonic()
    for count, n in enumerate(numbers, 1):
        for name in ("default", "eu"):
            django_cio.workspace(name).track(f"lag-{n % 5}", "tick", n=n,  # type: ignore
                                             sent=time.time())
        time.sleep(max(0.0, began + count / 10 - time.monotonic()))
    return numbers


def _p95(site: object, numbers: range) -> float:
    lags = [event["received_at"] - event["data"]["sent"]
            for event in site.store.events if event["data"].get("n") in numbers]  # type: ignore
    return statistics.quantiles(lags, n=20)[-1]


@contextlib.contextmanager
def _workers(env: dict[str, str], queues: list[str], processes: int,
             workdir: Path) -> Iterator[None]:
    """Two ``celery worker`` processes serving both queues, stopped (warm) on exit."""
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
               "-Q", ",".join(queues), "-c", str(processes), "--prefetch-multiplier", "1",
               "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    workers = []
    for number in range(2):
        log = (workdir / f"worker{number}.log").open("ab")
        workers.append(subprocess.Popen([*command, "-n", f"bench{number}@%h"], env=env,
                                        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    try:
        yield
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)


def _drain(sites: list[object], total: int, timeout: float = 600) -> float:
    """Seconds from the first request any site sees to the last op delivered to every one."""
    deadline = time.monotonic() + timeout
    started = None
    while time.monotonic() < deadline:
        counts = [site.store.stats()["ops_total"] for site in sites]  # type: ignore
        if any(counts) and started is None:
            started = time.monotonic()
        if all(count >= total for count in counts):
            return time.monotonic() - (started or time.monotonic())
        time.sleep(0.01)
    raise SystemExit(f"timed out: {counts} of {total:,} ops delivered")


if __name__ == "__main__":
    main()
