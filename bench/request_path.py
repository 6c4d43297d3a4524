"""What django-cio costs inside a request, against calling the ``customerio`` SDK inline.

    python bench/request_path.py [--latency-ms 50] [--broker redis://127.0.0.1:6379/14]

A "request" is one transaction making N ops (1 identify + N-1 events), for N = 1, 10, 100.
django-cio validates them and, on commit, publishes one Celery message to the real broker.
The baseline calls the official SDK for each op, inline, against the bundled fake Track API
answering after ``--latency-ms`` (Customer.io from a typical cloud region). The ratio is
measured in the same run. Messages per request are counted from Celery's publish signal.
``--json`` prints the report to stderr and one JSON line of figures to stdout (bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import django
from common import emit, figure, output
from django.conf import settings

COUNTS = (1, 10, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL",
                                                           "redis://127.0.0.1:6379/14"))
    parser.add_argument("--repeat", type=int, default=200, help="django-cio requests per N")
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()
    out = output(args.json)
    figures, most_messages = [], 0.0

    queue = f"bench-request-path-{os.getpid()}"
    settings.configure(
        USE_TZ=True, SECRET_KEY="bench",
        INSTALLED_APPS=["django_cio"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        # The HTTP backend, so ops go to the broker; no worker runs, the queue is deleted after.
        CUSTOMERIO={"SITE_ID": "bench", "API_KEY": "bench", "QUEUE": queue},
    )
    django.setup()
    from celery import Celery
    from celery.signals import after_task_publish
    from customerio import CustomerIO
    from django.db import transaction

    import django_cio
    from django_cio.fakeserver import FakeTrackAPI

    app = Celery("bench", broker=args.broker, set_as_current=True)
    published = []
    after_task_publish.connect(lambda **kwargs: published.append(1), weak=False)

    def ours(n: int, tag: str) -> None:
        with transaction.atomic():
            django_cio.identify(tag, email=f"{tag}@example.com", plan="pro")
            for step in range(n - 1):
                django_cio.track(tag, "viewed_item", item=step, price=9.99)

    with FakeTrackAPI(schemas=False, latency_ms=args.latency_ms) as fake:
        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http

        def inline(n: int, tag: str) -> None:
            sdk.identify(tag, email=f"{tag}@example.com", plan="pro")
            for step in range(n - 1):
                sdk.track(tag, "viewed_item", {"item": step, "price": 9.99})

        ours(1, "warm-up")  # connect to the broker and declare the queue once
        print(f"request path: fake Track API at {args.latency_ms:.0f} ms, "
              f"broker {app.connection_for_write().as_uri()}", file=out)
        print(f"{'ops':>5} {'django-cio':>12} {'messages':>9} {'SDK inline':>12} {'ratio':>9}",
              file=out)
        for n in COUNTS:
            published.clear()
            our_time = _median(lambda tag, n=n: ours(n, tag), args.repeat)
            messages = len(published) / args.repeat
            assert messages == 1.0, f"{messages} messages per request, expected 1"
            sdk_time = _median(lambda tag, n=n: inline(n, tag), max(2, 40 // n))
            print(f"{n:>5} {our_time * 1000:>10.2f}ms {messages:>9.1f} "
                  f"{sdk_time * 1000:>10.1f}ms {sdk_time / our_time:>8.0f}x", file=out)
            ratio = sdk_time / our_time
            what = f"{n} op{'s' if n > 1 else ''} per request: time in the request"
            figures.append(figure(
                "request path", what, our_time * 1000, "ms", baseline=sdk_time * 1000, ratio=ratio,
                target=">= 100x cheaper" if n == 10 else "",
                met=ratio >= 100 if n == 10 else None))
            most_messages = max(most_messages, messages)

    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(queue)
    if args.json:
        figures.append(figure(
            "request path", "broker messages per request (1, 10, 100 ops)", most_messages,
            "messages", target="<= 1", met=most_messages <= 1))
        emit(figures, latency_ms=args.latency_ms)


def _median(request, repeat: int) -> float:
    times = []
    for number in range(repeat):
        started = time.perf_counter()
        request(f"person-{number}")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
