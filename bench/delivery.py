"""Delivery throughput: queued messages drained by worker processes into the fake Track API.

    python bench/delivery.py [--shape web|bulk] [--broker redis|rabbitmq] [--workers 2]
                             [--threads 64] [--latency-ms 50] [--rate 80/s]

The messages (web: 20,000 x 1 op; bulk: 200 x 100 ops) are on the broker before the workers
start, so the figure is the drain rate: ops delivered per second from the first request to the
last op. Workers are a real ``celery worker`` (prefork pool, acks_late, prefetch 1), the
rate limit is django-cio's shared Redis limiter, and the fake Track API answers after
``--latency-ms``. The baseline, measured in the same run against the same server, is the
official ``customerio`` SDK sending one op per request, serially.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {"redis": "redis://127.0.0.1:6379/15", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
SHAPES = {"web": (20_000, 1), "bulk": (200, 100)}
TARGETS = {("web", "redis"): 1_500, ("web", "rabbitmq"): 3_000,
           ("bulk", "redis"): 10_000, ("bulk", "rabbitmq"): 10_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="web")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--processes", type=int, default=2,
                        help="worker processes (one celery worker, prefork pool)")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rate", default="80/s")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="cio-bench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "bench.settings",
           "CELERY_BROKER_URL": BROKERS[args.broker], "CIO_BENCH_QUEUE": f"bench-{run}",
           "CIO_BENCH_DB": str(workdir / "bench.sqlite3"), "CIO_BENCH_PREFIX": f"bench-{run}",
           "CIO_BENCH_RATE": args.rate, "CUSTOMERIO_SITE_ID": f"bench-{run}"}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from common import serial_rate
    from customerio import CustomerIO
    from django.core.management import call_command

    from bench.celery_app import app
    from django_cio import producer
    from django_cio.fakeserver import FakeTrackAPI
    from django_cio.operations import Event

    call_command("migrate", verbosity=0)
    messages, ops_each = SHAPES[args.shape]
    total = messages * ops_each
    with FakeTrackAPI(site_id=env["CUSTOMERIO_SITE_ID"], latency_ms=args.latency_ms) as fake:
        os.environ["CUSTOMERIO_TRACK_URL"] = env["CUSTOMERIO_TRACK_URL"] = fake.url
        for number in range(messages):
            ops = [Event(f"person-{number}", "viewed_item", {"item": step, "price": 9.99})
                   .to_dict() for step in range(ops_each)]
            producer.publish_to_broker(ops)
        workers = [_start_worker(env, args, 0, workdir)]
        try:
            seconds = _drain(fake, total, args.timeout)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        stats = fake.store.stats()

        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        sdk_rate = serial_rate(lambda n: sdk.track(f"sdk-{n}", "viewed_item", {"item": n}), 3)

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(env["CIO_BENCH_QUEUE"])
    rate = total / seconds
    target = TARGETS[(args.shape, args.broker)]
    requests = stats["requests"]
    print(f"{args.shape} shape ({messages:,} messages x {ops_each} op), {args.broker} broker, "
          f"{args.processes} worker processes, fake server {args.latency_ms:.0f} ms, "
          f"limit {args.rate}")
    print(f"  django-cio: {total:,} ops in {seconds:.1f} s = {rate:,.0f} ops/s "
          f"({rate / target:.2f}x the {target:,} ops/s target); {requests:,} requests, "
          f"{total / requests:.1f} ops/request, busiest second {stats['max_requests_per_second']} "
          f"requests, 429s {stats['rate_limited']}, duplicate event ids "
          f"{stats['duplicate_event_ids']}")
    print(f"  SDK serial: {sdk_rate:,.1f} ops/s  ->  ratio {rate / sdk_rate:,.0f}x")


def _start_worker(env: dict[str, str], args: argparse.Namespace, number: int,
                  workdir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
               "-Q", env["CIO_BENCH_QUEUE"], "-c", str(args.processes),
               "--prefetch-multiplier", "1", "-n", f"bench{number}@%h", "-l", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    log = (workdir / f"worker{number}.log").open("wb")
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _drain(fake: object, total: int, timeout: float) -> float:
    """Seconds from the first request the fake server sees to the last op delivered."""
    deadline = time.monotonic() + timeout
    started = None
    while time.monotonic() < deadline:
        delivered = fake.store.stats()["ops_total"]  # type: ignore[attr-defined]
        if delivered and started is None:
            started = time.monotonic()
        if delivered >= total:
            return time.monotonic() - (started or time.monotonic())
        time.sleep(0.01)
    raise SystemExit(f"timed out: {delivered:,} of {total:,} ops delivered")


if __name__ == "__main__":
    main()
