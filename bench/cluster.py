"""Scale-out across hosts: delivery throughput with 1, 2 and 3 worker hosts under one limit.

    sudo python bench/cluster.py [--messages 3000] [--limits 10,1000]

The cluster of the cross-host tests (tests/cluster/deployment.py: network namespaces, the
broker and the limiter's Redis 20-50 ms round trip away with 1% loss, the fake Track API
answering after 50 ms, the example project's settings). For each limit and each number of
worker hosts (each ``celery worker -c 2 --prefetch-multiplier 1``, as docs/delivery.md runs
it): ``--messages`` messages of one event each (the web shape) are queued while no worker
runs, then the workers start, and ops/s is timed at the fake from its first arrival to its
last. A limit of 10/s binds (drains pack the backlog into fuller requests); 1,000/s does
not. The busiest 1-second window of requests at the fake is reported against the limit.

The baseline, in the same run against the same fake, is the official ``customerio`` SDK
on a worker host sending one event per request, serially. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, figure, output
from tests.cluster.deployment import WORKERS, Deployment, deployed, wait_until
from tests.cluster.netns import unavailable

FILL = """
from django.db import transaction
import django_cio
for n in range({messages}):
    with transaction.atomic():  # one message each, as a web request makes
        django_cio.track("{prefix}" + str(n), "scaled", n=n)
"""

SDK = """
import time
from customerio import CustomerIO
sdk = CustomerIO("demo-site", "demo-key", retries=0)
sdk.base_url = "{url}/api/v1"  # the SDK only speaks https; same paths over http
count, started = 0, time.perf_counter()
while time.perf_counter() - started < {seconds}:
    sdk.track("sdk-" + str(count), "scaled", n=count)
    count += 1
print(count / (time.perf_counter() - started))
"""


def run(deployment: Deployment, hosts: int, limit: int, messages: int) -> dict[str, float]:
    """``messages`` queued, then delivered by ``hosts`` worker hosts; ops/s and busiest."""
    deployment.reset_fake(rate_limit=limit)
    prefix = f"scale-{uuid.uuid4().hex[:6]}-"
    # Queued from the broker's own host, over its loopback: quick, and no worker running.
    deployment.django("broker", "shell", "-c", FILL.format(messages=messages, prefix=prefix),
                      timeout=600, CELERY_BROKER_URL=deployment.env["CELERY_BROKER_URL"]
                      .replace(deployment.hosts["broker"].address, "127.0.0.1"))
    for name in WORKERS[:hosts]:
        deployment.start_worker(name, CLUSTER_RATE_LIMIT=f"{limit}/s")
    try:
        wait_until(lambda: deployment.fake("stats")["events"] >= messages, 900,
                   f"{messages} events delivered", interval=1)
    finally:
        deployment.stop_workers()
    arrivals = sorted(e["received_at"] for e in deployment.events(prefix))
    return {"ops_per_second": len(arrivals) / (arrivals[-1] - arrivals[0]),
            "busiest": deployment.busiest_second(),
            "requests": deployment.fake("stats")["requests"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--limits", default="10,1000", help="RATE_LIMITs to run, per second")
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()
    out = output(args.json)
    reason = unavailable()
    if reason:
        print(f"bench/cluster.py: {reason}", file=out)
        sys.exit(2)
    figures = []
    with tempfile.TemporaryDirectory(prefix="cio-bench-cluster-") as workdir, \
            deployed("redis", Path(workdir), rate_limit=10, workers=()) as deployment:
        sdk = float(deployment.cluster.run(deployment.hosts["worker1"], [
            sys.executable, "-c", SDK.format(url=deployment.api_url, seconds=5)],
            deployment.host_env("worker1")).stdout)
        print(f"Baseline: the official SDK from a worker host, serially: {sdk:,.1f} ops/s",
              file=out)
        for limit in (int(limit) for limit in args.limits.split(",")):
            for hosts in (1, 2, 3):
                started = time.monotonic()
                result = run(deployment, hosts, limit, args.messages)
                name = f"{hosts} worker host{'s' if hosts > 1 else ''} x -c 2, limit {limit}/s"
                print(f"{name}: {result['ops_per_second']:,.0f} ops/s "
                      f"({result['ops_per_second'] / sdk:,.0f}x the SDK) in "
                      f"{result['requests']} requests, busiest 1-s window "
                      f"{result['busiest']} (limit {limit}); {time.monotonic() - started:.0f} s",
                      file=out)
                figures += [
                    figure("cluster", f"{name}: ops/s", result["ops_per_second"], "ops/s",
                           baseline=sdk, ratio=result["ops_per_second"] / sdk),
                    figure("cluster", f"{name}: busiest 1-s window", result["busiest"],
                           "requests", target=f"<= {limit}",
                           met=result["busiest"] <= limit),
                ]
    if args.json:
        emit(figures)


if __name__ == "__main__":
    main()
