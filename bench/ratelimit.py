"""Rate-limit accuracy: N processes sending as fast as the limiter lets them.

    python bench/ratelimit.py [--limit 80] [--seconds 5] [--processes 1 2 4 8]

Each process loops: acquire a slot, send one small request to the bundled fake Track API.
For each N, django-cio's shared Redis limiter is measured against the baseline in the same
run: the same processes each limited on their own at the full rate, which is what Celery's
per-worker ``rate_limit="80/s"`` does. Printed: the most requests in any sliding 1-second
window as a share of the limit (must stay <= 1.00) and the share of the limit used.
``--json`` prints the report to stderr and one JSON line of figures to stdout (bench/run.py).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import time
import uuid
from typing import Any

from common import busiest_second, emit, figure, output

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def _configure(site_id: str, limit: int) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            USE_TZ=True, SECRET_KEY="bench", INSTALLED_APPS=["django_cio"],
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            CUSTOMERIO={"SITE_ID": site_id, "API_KEY": "fake-api-key",
                        "RATE_LIMIT": f"{limit}/s", "REDIS_URL": REDIS_URL},
        )
        django.setup()


def _process(url: str, site_id: str, limit: int, shared: bool, seconds: float,
             start_at: float) -> None:
    _configure(site_id, limit)
    from django_cio.client import TrackClient
    from django_cio.ratelimit import LocalLimiter, get_limiter

    limiter: Any = get_limiter() if shared else LocalLimiter(1 / limit)
    client = TrackClient(site_id, "fake-api-key", url=url, timeout=5)
    time.sleep(max(0.0, start_at - time.time()))
    number = 0
    while True:
        if shared:  # as delivery.engine.Delivery does: a slot woken up too late for is not used
            limiter.acquire()
        else:
            time.sleep(max(0.0, limiter.reserve(float("inf"))))
        if time.time() >= start_at + seconds:
            return
        client.identify(f"{os.getpid()}-{number}")
        number += 1


def measure(processes: int, limit: int, seconds: float, shared: bool) -> tuple[float, float]:
    from django_cio.fakeserver import FakeTrackAPI

    site_id = f"bench-limit-{uuid.uuid4().hex[:8]}"
    with FakeTrackAPI(schemas=False, site_id=site_id) as fake:
        fake.store.requests = collections.deque()  # keep every request's time, not the last 2,000
        context = multiprocessing.get_context("spawn")
        start_at = time.time() + 1.5 + 0.3 * processes
        workers = [context.Process(target=_process, args=(fake.url, site_id, limit, shared,
                                                          seconds, start_at))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        times = sorted(request["at"] for request in fake.store.requests)
    return busiest_second(times) / limit, len(times) / (limit * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()
    _configure("bench", args.limit)
    out = output(args.json)
    print(f"limit {args.limit} req/s, {args.seconds:.0f} s per run; busiest 1-s window / limit "
          f"(<= 1.00 keeps clear of 429s), share of the limit used", file=out)
    print(f"{'processes':>9} | {'django-cio shared':>21} | {'per-process limit (baseline)':>29}",
          file=out)
    figures = []
    for processes in args.processes:
        ours = measure(processes, args.limit, args.seconds, shared=True)
        base = measure(processes, args.limit, args.seconds, shared=False)
        print(f"{processes:>9} | {ours[0]:>9.2f} {ours[1]:>10.0%} | {base[0]:>13.2f} "
              f"{base[1]:>14.0%}", file=out)
        who = f"{processes} process{'es' if processes > 1 else ''}"
        figures += [
            figure("rate limit", f"{who}: busiest 1-s window / limit {args.limit}", ours[0],
                   "x limit", baseline=base[0], target="<= 1.00", met=ours[0] <= 1.0,
                   note="baseline: Celery-style per-process limits"),
            figure("rate limit", f"{who}: share of the limit used", ours[1] * 100, "%",
                   baseline=base[1] * 100, target=">= 90%", met=ours[1] >= 0.9),
        ]
    if args.json:
        emit(figures, limit=args.limit, seconds=args.seconds)

if __name__ == "__main__":
    main()
