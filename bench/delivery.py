"""Delivery throughput: queued messages drained by worker processes into the fake Track API.

    python bench/delivery.py [--shape web|bulk] [--broker redis|rabbitmq] [--workers 2]
                             [--processes 4] [--latency-ms 50] [--rate 80/s] [--messages N]

The messages (web: 20,000 x 1 op; bulk: 200 x 100 ops) are on the broker before the workers
start, so the figure is the drain rate: ops delivered per second from the first request to the
last op. Workers are real ``celery worker`` processes run as the README tells users to (by
default two, each ``-Q <queue> --prefetch-multiplier 1 -c 4``: prefork, acks_late), the
rate limit is django-cio's shared Redis limiter, and the fake Track API answers after
``--latency-ms``. The baseline, measured in the same run against the same server, is the
official ``customerio`` SDK sending one op per request, serially.

``--messages`` changes how many messages of the shape are queued (the targets are quoted for
the README's 2 workers x ``-c 4``, 50 ms and 80/s only). ``--json`` prints the report to
stderr and one JSON line to stdout: the headline figures and every request the fake server saw
(arrival, ops applied), for ``bench/run.py``'s plots.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKERS = {"redis": "redis://127.0.0.1:6379/15", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
SHAPES = {"web": (20_000, 1), "bulk": (200, 100)}
TARGETS = {("web", "redis"): 6_000, ("web", "rabbitmq"): 8_000,
           ("bulk", "redis"): 40_000, ("bulk", "rabbitmq"): 40_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="web")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--workers", type=int, default=2,
                        help="celery worker instances (default 2, as the README)")
    parser.add_argument("--processes", type=int, default=4,
                        help="pool processes of each worker, -c (default 4, as the README)")
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--rate", default="80/s")
    parser.add_argument("--messages", type=int, help="messages to queue (default: the shape's)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
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
    from common import busiest_second, emit, figure, output, serial_rate
    from customerio import CustomerIO
    from django.core.management import call_command

    from bench.celery_app import app
    from django_cio.broker import publish
    from django_cio.conf import parse_rate
    from django_cio.fakeserver import FakeTrackAPI
    from django_cio.operations import Event

    call_command("migrate", verbosity=0)
    messages, ops_each = SHAPES[args.shape]
    # The targets hold for this setup (any message count: --quick queues fewer).
    standard = (args.workers, args.processes) == (2, 4) and args.latency_ms == 50 and \
        args.rate == "80/s"
    messages = args.messages or messages
    total = messages * ops_each
    with FakeTrackAPI(schemas=False, site_id=env["CUSTOMERIO_SITE_ID"],
                      latency_ms=args.latency_ms) as fake:
        seen = _record_requests(fake)
        os.environ["CUSTOMERIO_TRACK_URL"] = env["CUSTOMERIO_TRACK_URL"] = fake.url
        for number in range(messages):
            ops = [Event(f"person-{number}", "viewed_item", {"item": step, "price": 9.99})
                   .to_dict() for step in range(ops_each)]
            publish.publish_ops(ops)
        sends = workdir / "sends.log"  # bench/apps.py logs when each request leaves a worker
        workers = [_start_worker({**env, "CIO_BENCH_SEND_LOG": str(sends)}, args, number,
                                 workdir) for number in range(args.workers)]
        try:
            seconds = _drain(fake, total, args.timeout)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        stats = fake.store.stats()
        ours = [request for request in seen if request[1] is not None]  # not the SDK's

        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        sdk_rate = serial_rate(lambda n: sdk.track(f"sdk-{n}", "viewed_item", {"item": n}), 3)

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(env["CIO_BENCH_QUEUE"])
    rate = total / seconds
    target = TARGETS[(args.shape, args.broker)] if standard else None
    limit = parse_rate(args.rate).per_second
    requests = stats["requests"]
    busiest = busiest_second(sorted(request[0] for request in ours))
    logged = [line.split() for line in sends.read_text().splitlines()] if sends.exists() else []
    sent = sorted(float(moment) for what, moment in logged if what == "send")
    booked = sorted(float(moment) for what, moment in logged if what == "slot")
    busiest_sent, busiest_booked = busiest_second(sent), busiest_second(booked)
    out = output(args.json)
    pool = (f"{args.workers} worker{'s' if args.workers > 1 else ''} x -c {args.processes}"
            if args.workers > 1 else
            f"{args.processes} worker process{'es' if args.processes > 1 else ''}")
    print(f"{args.shape} shape ({messages:,} messages x {ops_each} op), {args.broker} broker, "
          f"{pool}, fake server {args.latency_ms:.0f} ms, limit {args.rate}", file=out)
    against = f" ({rate / target:.2f}x the {target:,} ops/s target)" if target else ""
    print(f"  django-cio: {total:,} ops in {seconds:.1f} s = {rate:,.0f} ops/s{against}; "
          f"{requests:,} requests ({requests / seconds:.1f}/s), {total / requests:.1f} "
          f"ops/request, busiest 1-s window {busiest} requests as received ({busiest_sent} as "
          f"sent, {busiest_booked} as booked by the limiter; limit {limit:g}), "
          f"429s {stats['rate_limited']}, duplicate event ids {stats['duplicate_event_ids']}",
          file=out)
    print(f"  SDK serial: {sdk_rate:,.1f} ops/s  ->  ratio {rate / sdk_rate:,.0f}x", file=out)
    if args.json:
        name = f"{args.shape} {messages:,}x{ops_each}, {args.broker}, {pool}"
        if not standard:
            name += f", {args.latency_ms:g} ms, limit {args.rate}"
        figures = [
            figure("delivery", name, rate, "ops/s", baseline=sdk_rate, ratio=rate / sdk_rate,
                   target=f">= {target:,} ops/s" if target else "",
                   met=rate >= target if target else None),
            figure("delivery", f"{name}: busiest 1-s window", busiest, "requests",
                   target=f"<= limit {limit:g}", met=busiest <= limit,
                   note=f"{busiest_sent} as sent, {busiest_booked} as booked"),
        ]
        started = min(request[0] for request in ours)
        emit(figures, started=started, shape=args.shape, broker=args.broker,
             processes=args.processes, latency_ms=args.latency_ms, limit=limit,
             messages=messages, ops_each=ops_each, total=total, seconds=seconds,
             ops_per_second=rate, requests=requests, ops_per_request=total / requests,
             busiest_second=busiest, busiest_second_sent=busiest_sent,
             busiest_second_booked=busiest_booked, send_delays=_delays(booked, sent, started),
             rate_limited=stats["rate_limited"],
             duplicate_event_ids=stats["duplicate_event_ids"], sdk_ops_per_second=sdk_rate,
             timeline=[[round(arrived - started, 4), round(done - started, 4), ops, status]
                       for arrived, done, ops, status in ours])


def _delays(booked: list[float], sent: list[float], started: float) -> list[list[float]]:
    """[slot, seconds from the slot to the send] for each request, the n-th slot against the
    n-th send (a slot is followed by its request straight away, so the orders agree)."""
    return [[round(slot - started, 4), round(send - slot, 4)]
            for slot, send in zip(booked, sent, strict=False)]


def _record_requests(fake: object) -> list[list]:
    """Log each Track API request the fake server answers as [arrival, answer time, ops
    applied, status], in arrival order (the store keeps no ops per request). Arrival is when
    the request line came in, before the body is read: a 200 KB batch body can take the
    server's threads tens of milliseconds to read while other requests hold the GIL."""
    from django_cio.fakeserver import server

    seen: list[list] = []
    lock = threading.Lock()
    arrivals = threading.local()
    track, parse_request = fake.track, server.Handler.parse_request  # type: ignore[attr-defined]

    def parse_and_stamp(handler: object) -> bool:
        arrivals.at = time.time()
        return parse_request(handler)

    def recorded(method: str, path: str, authorized: bool, body: object) -> object:
        entry: list = [getattr(arrivals, "at", time.time()), None, 0, 500]
        with lock:
            seen.append(entry)
        try:
            status, answer, ops = track(method, path, authorized, body)
        except Exception as exc:  # a Reply: 429, 401, 400...
            entry[1], entry[3] = time.time(), getattr(exc, "status", 500)
            raise
        entry[1], entry[2], entry[3] = time.time(), ops, status
        return status, answer, ops

    server.Handler.parse_request = parse_and_stamp  # this process's fake server only
    fake.track = recorded  # type: ignore[attr-defined]
    return seen


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
