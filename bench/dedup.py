"""What an unchanged identify costs: django-cio's dedup against the SDK sending it again.

    python bench/dedup.py [--people 100] [--latency-ms 50]

Each person is created (an identify carrying ``created_at``, delivered and remembered in the
Redis cache), then identified again without ``created_at`` and otherwise unchanged, one message
each, as a re-save of every row right after its create would do. The baseline, in the
same run and against the same fake Track API, is the official ``customerio`` SDK sending the
repeats. Printed: HTTP requests the repeats cost, and time per repeat. ``--json`` prints the
report to stderr and one JSON line of figures to stdout (bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from common import emit, figure, output

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()

    import django
    from django.conf import settings

    from django_cio.fakeserver import FakeTrackAPI

    with FakeTrackAPI(schemas=False, latency_ms=args.latency_ms) as fake:
        settings.configure(
            USE_TZ=True, SECRET_KEY="bench", INSTALLED_APPS=["django_cio"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache",
                                "LOCATION": REDIS_URL,
                                "KEY_PREFIX": f"bench-dedup-{uuid.uuid4().hex[:8]}"}},
            CUSTOMERIO={"SITE_ID": fake.site_id, "API_KEY": fake.api_key, "TRACK_URL": fake.url,
                        "RATE_LIMIT": "1000/s"},
        )
        django.setup()
        from customerio import CustomerIO

        from django_cio.delivery.engine import Delivery
        from django_cio.operations import Identify

        people = [Identify(f"person-{n}", {"email": f"p{n}@example.com", "plan": "pro"})
                  for n in range(args.people)]
        created = [Identify(op.person_id, {**op.attributes, "created_at": 1700000000})
                   for op in people]
        Delivery([op.to_dict() for op in created]).run()  # the create: sent and remembered
        before = fake.store.stats()["requests"]
        started = time.perf_counter()
        for op in people:  # unchanged re-saves, a message each
            Delivery([op.to_dict()]).run()
        ours = (time.perf_counter() - started) / args.people
        our_requests = fake.store.stats()["requests"] - before

        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        before = fake.store.stats()["requests"]
        started = time.perf_counter()
        for op in people:
            sdk.identify(op.person_id, **op.attributes)
        theirs = (time.perf_counter() - started) / args.people
        sdk_requests = fake.store.stats()["requests"] - before

    out = output(args.json)
    print(f"{args.people} re-saves right after create, fake Track API at {args.latency_ms:.0f} ms",
          file=out)
    print(f"  django-cio: {our_requests} HTTP requests, {ours * 1000:.2f} ms per identify",
          file=out)
    print(f"  SDK:        {sdk_requests} HTTP requests, {theirs * 1000:.2f} ms per identify "
          f"({theirs / ours:,.0f}x the cost)", file=out)
    if args.json:
        emit([
            figure("dedup", f"HTTP requests for {args.people} re-saves after create",
                   our_requests, "requests", baseline=sdk_requests, target="0",
                   met=our_requests == 0),
            figure("dedup", "time per re-save after create", ours * 1000, "ms",
                   baseline=theirs * 1000, ratio=theirs / ours),
        ])

if __name__ == "__main__":
    main()
