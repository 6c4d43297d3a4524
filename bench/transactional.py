"""Transactional email: what ``send_mail()`` costs in a request, and how fast workers send.

    python bench/transactional.py [--latency-ms 50] [--messages 1000] [--repeat 200]

1. The request path. ``send_mail()`` through ``django_cio.mail.EmailBackend`` inside a
   transaction: validated, then published to the real Redis broker on commit. The baseline
   sends the same email inline with the official ``customerio`` SDK (``APIClient
   .send_email``) to the bundled fake App API answering after ``--latency-ms``.
2. Delivery. ``--messages`` emails are queued, then drained by two ``celery worker``
   processes run as the README tells users to (``-Q <queue> --prefetch-multiplier 1 -c 4``),
   under the default ``APP_RATE_LIMIT`` (100/s, shared in Redis), each claimed once in
   PostgreSQL (a database of its own, dropped after). The baseline is the SDK sending
   serially. The fake keeps every message: a duplicate would show.

``--json`` prints the report to stderr and one JSON line of figures to stdout (bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
LIMIT = 100  # APP_RATE_LIMIT's default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200, help="timed send_mail() calls")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    database = f"cio_bench_{run}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        measure(args, run, database)
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def measure(args: argparse.Namespace, run: str, database: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "bench.settings",
           "DATABASE_URL": f"{POSTGRES}/{database}", "CIO_BENCH_QUEUE": f"bench-{run}",
           "CIO_BENCH_PREFIX": f"bench-{run}", "CUSTOMERIO_SITE_ID": f"bench-{run}",
           "CUSTOMERIO_APP_API_KEY": f"bench-{run}-app"}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from common import busiest_second, emit, figure, output, serial_rate
    from customerio import APIClient, SendEmailRequest
    from django.conf import settings
    from django.core.mail import EmailMessage
    from django.core.management import call_command
    from django.db import transaction

    from bench.celery_app import app
    from django_cio.fakeserver import FakeTrackAPI

    settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"
    call_command("migrate", verbosity=0)
    out = output(args.json)

    def email(n: int) -> EmailMessage:
        message = EmailMessage(to=[f"person-{n}@example.com"], from_email="shop@example.com")
        message.template_id = "password_reset"
        message.merge_global_data = {"n": n, "link": f"https://example.com/reset/{n}"}
        return message

    def ours(n: int) -> None:
        with transaction.atomic():
            email(n).send()

    with FakeTrackAPI(schemas=False, site_id=env["CUSTOMERIO_SITE_ID"],
                      app_api_key=env["CUSTOMERIO_APP_API_KEY"],
                      latency_ms=args.latency_ms) as fake:
        os.environ["CUSTOMERIO_APP_URL"] = env["CUSTOMERIO_APP_URL"] = fake.url
        settings.CUSTOMERIO = {**settings.CUSTOMERIO, "APP_URL": fake.url}
        sdk = APIClient(env["CUSTOMERIO_APP_API_KEY"], url=fake.url, retries=0)

        def inline(n: int) -> None:
            sdk.send_email(SendEmailRequest(
                to=f"sdk-{n}@example.com", identifiers={"email": f"sdk-{n}@example.com"},
                transactional_message_id="password_reset",
                message_data={"n": n, "link": f"https://example.com/reset/{n}"}))

        ours(0)  # connect to the broker and declare the queue once
        request = _median(ours, range(1, args.repeat + 1))
        request_sdk = _median(inline, range(20))
        for n in range(args.repeat + 1, args.messages):
            ours(n)
        sent_before = len(fake.store.messages)  # the SDK's
        workers = [_start_worker(env, number) for number in range(2)]
        try:
            seconds, arrivals = _drain(fake, sent_before, args.messages, args.timeout)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        ns = [m["body"]["message_data"]["n"] for m in fake.store.messages[sent_before:]]
        sdk_rate = serial_rate(inline, 3)

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(env["CIO_BENCH_QUEUE"])
    rate, busiest = args.messages / seconds, busiest_second(arrivals)
    duplicates = len(ns) - len(set(ns))
    print(f"transactional email: fake App API at {args.latency_ms:.0f} ms", file=out)
    print(f"  request path: send_mail() {request * 1000:.2f} ms (median of {args.repeat}), "
          f"SDK inline {request_sdk * 1000:.1f} ms  ->  {request_sdk / request:,.0f}x", file=out)
    print(f"  delivery: {args.messages:,} emails in {seconds:.1f} s = {rate:,.1f}/s by 2 workers "
          f"x -c 4 (limit {LIMIT}/s; busiest 1-s window {busiest}), duplicates {duplicates}; "
          f"SDK serial {sdk_rate:,.1f}/s  ->  {rate / sdk_rate:,.1f}x", file=out)
    if duplicates or len(set(ns)) != args.messages:
        raise SystemExit(f"{len(set(ns))} distinct emails of {args.messages}, "
                         f"{duplicates} duplicates")
    if args.json:
        emit([
            figure("transactional", "send_mail() in a request", request * 1000, "ms",
                   baseline=request_sdk * 1000, ratio=request_sdk / request),
            figure("transactional", f"{args.messages:,} emails, 2 workers x -c 4", rate,
                   "emails/s", baseline=sdk_rate, ratio=rate / sdk_rate),
            figure("transactional", "busiest 1-s window", busiest, "requests",
                   target=f"<= limit {LIMIT}", met=busiest <= LIMIT),
            figure("transactional", "emails sent twice", duplicates, "emails", target="0",
                   met=duplicates == 0),
        ], latency_ms=args.latency_ms)


def _median(send, numbers) -> float:
    times = []
    for n in numbers:
        started = time.perf_counter()
        send(n)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _start_worker(env: dict[str, str], number: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
               "-Q", env["CIO_BENCH_QUEUE"], "-c", "4", "--prefetch-multiplier", "1",
               "-n", f"bench{number}@%h", "-l", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


def _drain(fake, before: int, total: int, timeout: float) -> tuple[float, list[float]]:
    """Seconds from the first email the workers sent to the last, and when each arrived."""
    deadline, arrivals = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        count = len(fake.store.messages) - before
        while len(arrivals) < count:
            arrivals.append(time.monotonic())
        if count >= total:
            return arrivals[-1] - arrivals[0], arrivals
        time.sleep(0.002)
    raise SystemExit(f"timed out: {len(fake.store.messages) - before:,} of {total:,} sent")


if __name__ == "__main__":
    main()
