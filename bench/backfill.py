"""Backfill 1,000,000 rows from PostgreSQL: wall time, peak memory, and the SDK loop.

    python bench/backfill.py [--rows 1000000] [--latency-ms 20] [--cap 100] [--batch-size 5000]

Rows are auth users in a PostgreSQL database of the benchmark's own (made and dropped here).
``manage.py cio_backfill auth.User`` runs as a separate process, so its peak RSS is its own;
the bundled fake Track API answers after ``--latency-ms`` and refuses more than ``--cap``
requests a second (429s would show). The baseline is a naive loop calling the official SDK for
each row, measured on a few thousand rows against the same server and extrapolated to all rows
(say so when quoting it). ``--json`` prints the report to stderr and one JSON line of
figures to stdout (bench/run.py); the 120 s target is for 1,000,000 rows only.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from common import emit, figure, output

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--cap", type=float, default=100, help="fake server requests/s")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--sdk-rows", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()

    name = f"cio_bench_backfill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "bench.settings",
           "DATABASE_URL": url, "CIO_BENCH_PREFIX": f"bench-{name}",
           "CUSTOMERIO_SITE_ID": f"bench-{name}"}
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    try:
        run(args, env, url)
    finally:
        from django.core.cache import caches

        caches["default"].delete_pattern("*")  # this run's dedup keys (its own key prefix)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(args: argparse.Namespace, env: dict[str, str], url: str) -> None:
    import django

    django.setup()
    from customerio import CustomerIO
    from django.core.management import call_command

    from django_cio.fakeserver import FakeTrackAPI

    call_command("migrate", verbosity=0)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(  # fast, and the same rows an app's users table would hold
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
            "email, is_staff, is_active, date_joined) SELECT '!', false, 'user' || n, "
            "'First' || n, '', 'user' || n || '@example.com', false, true, now() "
            "FROM generate_series(1, %s) AS n", (args.rows,))
        db.execute("ANALYZE auth_user")

    with FakeTrackAPI(schemas=False, site_id=env["CUSTOMERIO_SITE_ID"], latency_ms=args.latency_ms,
                      rate_limit=args.cap) as fake:
        env = {**env, "CUSTOMERIO_TRACK_URL": fake.url}
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "django", "cio_backfill", "auth.User", "--batch-size",
             str(args.batch_size), "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True,
        )
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if result.returncode:
            raise SystemExit(result.stdout + result.stderr)
        stats = fake.store.stats()

        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        fake.configure(rate_limit=None)
        sample_started = time.perf_counter()
        for n in range(args.sdk_rows):
            sdk.identify(f"sdk{n}", email=f"sdk{n}@example.com", first_name=f"First{n}",
                         is_active=True, date_joined=int(time.time()))
        sdk_rate = args.sdk_rows / (time.perf_counter() - sample_started)

    sdk_seconds = args.rows / sdk_rate
    out = output(args.json)
    print(f"backfill of {args.rows:,} rows (PostgreSQL -> fake Track API at "
          f"{args.latency_ms:.0f} ms, capped at {args.cap:.0f} req/s), batch size "
          f"{args.batch_size:,}", file=out)
    print(f"  django-cio: {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s), peak RSS "
          f"{peak_mb:.0f} MB; {stats['people']:,} people, {stats['requests']:,} requests, "
          f"429s {stats['rate_limited']}", file=out)
    print(f"  SDK loop:   {sdk_rate:,.1f} rows/s on {args.sdk_rows:,} rows -> about "
          f"{sdk_seconds / 3600:,.1f} h for {args.rows:,} rows (extrapolated)  ->  ratio "
          f"{sdk_seconds / seconds:,.0f}x", file=out)
    full = args.rows == 1_000_000
    time_target = ("met" if seconds <= 120 else "MISSED") if full else "not this size"
    print(f"  targets: <= 120 s for 1,000,000 rows ({time_target}), "
          f"< 200 MB RSS ({'met' if peak_mb < 200 else 'MISSED'})", file=out)
    if args.json:
        emit([
            figure("backfill", f"{args.rows:,} rows: wall time", seconds, "s",
                   baseline=sdk_seconds, ratio=sdk_seconds / seconds,
                   target="<= 120 s (1M rows)" if full else "",
                   met=seconds <= 120 if full else None,
                   note=f"SDK time extrapolated from {args.sdk_rows:,} rows"),
            figure("backfill", f"{args.rows:,} rows: rate", args.rows / seconds, "rows/s",
                   baseline=sdk_rate, ratio=args.rows / seconds / sdk_rate),
            figure("backfill", f"{args.rows:,} rows: peak RSS", peak_mb, "MB",
                   target="< 200 MB", met=peak_mb < 200),
            figure("backfill", f"{args.rows:,} rows: 429s from the fake server (cap "
                   f"{args.cap:g}/s)", stats["rate_limited"], "responses"),
        ], rows=args.rows, requests=stats["requests"])

if __name__ == "__main__":
    main()
