"""How many small requests per second the bundled fake Track API serves on this machine.

    python bench/fakeserver.py [--seconds 5] [--processes 2] [--threads 4]

Load comes from separate processes (so the server keeps its own GIL) over keep-alive
connections, each sending small v1 identify requests. The same run then measures one client
sending serially, the official ``customerio`` SDK against ours, on the same server. The
2,000 req/s target is the floor the load tests and benchmarks of later issues rely on.
``--json`` prints the report to stderr and one JSON line of figures to stdout (bench/run.py).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import threading
import time
from urllib.parse import urlsplit

import django
from common import emit, figure, output, serial_rate
from django.conf import settings

TARGET = 2000


def _hammer(url: str, auth: str, seconds: float, threads: int) -> float:
    """Send requests from ``threads`` keep-alive connections for ``seconds``; return req/s."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    body = b'{"plan":"pro"}'
    counts = [0] * threads
    started = time.monotonic()
    deadline = started + seconds

    def one(slot: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=10)
        while time.monotonic() < deadline:
            connection.request("PUT", f"/api/v1/customers/{slot}-{counts[slot]}", body, headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            counts[slot] += 1
        connection.close()

    workers = [threading.Thread(target=one, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()

    settings.configure(USE_TZ=True)
    django.setup()
    from customerio import CustomerIO

    from django_cio.client import TrackClient
    from django_cio.fakeserver import FakeTrackAPI

    with FakeTrackAPI(schemas=False, ) as fake:
        auth = "Basic " + base64.b64encode(fake.credentials.encode()).decode()
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.processes) as pool:
            # Each process times its own run, so pool start-up doesn't count.
            rates = pool.starmap(_hammer, [(fake.url, auth, args.seconds, args.threads)]
                                 * args.processes)
        served = sum(rates)
        statuses = fake.store.stats()["statuses"]

        ours = TrackClient(fake.site_id, fake.api_key, url=fake.url)
        sdk = CustomerIO(fake.site_id, fake.api_key, retries=0)
        sdk.base_url = f"{fake.url}/api/v1"  # the SDK only speaks https; same paths over http
        serial_seconds = max(1.0, args.seconds / 2)
        ours_rate = serial_rate(lambda n: ours.identify(f"o{n}", plan="pro"), serial_seconds)
        sdk_rate = serial_rate(lambda n: sdk.identify(f"s{n}", plan="pro"), serial_seconds)

    load = f"{args.processes} processes x {args.threads} keep-alive connections"
    out = output(args.json)
    print(f"fake server, {load}: {served:,.0f} req/s "
          f"({served / TARGET:.1f}x the {TARGET:,} req/s target; statuses {statuses})", file=out)
    print(f"one client, serial:  django-cio TrackClient {ours_rate:,.0f} req/s, "
          f"customerio SDK {sdk_rate:,.0f} req/s (ratio {ours_rate / sdk_rate:.2f}x)", file=out)
    if args.json:
        emit([
            figure("fake server", f"served, {load}", served, "req/s",
                   target=f">= {TARGET:,} req/s", met=served >= TARGET),
            figure("fake server", "one client, serial, 1 op per request", ours_rate, "req/s",
                   baseline=sdk_rate, ratio=ours_rate / sdk_rate),
        ], statuses=statuses)

if __name__ == "__main__":
    main()
