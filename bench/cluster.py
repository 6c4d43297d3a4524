"""Scale-out across hosts: delivery throughput with 1, 2 and 3 worker hosts under one limit.

    sudo python bench/cluster.py [--messages 3000] [--op-kb 20] [--api-latency-ms 500]
                                 [--limits 10,1000]

The cluster of the cross-host tests (tests/cluster/deployment.py: network namespaces, the
broker and the limiter's Redis 20-50 ms round trip away with 1% loss, the example project's
settings). For each limit and each number of worker hosts (each ``celery worker -c 2
--prefetch-multiplier 1``, as docs/delivery.md runs it): ``--messages`` messages of one event
of ``--op-kb`` KB each are queued while no worker runs, then the workers start, and ops/s and
requests/s are timed at the fake from its first arrival to its last. Big ops fill a request
with a few dozen (500 KB a batch), and the fake answers after ``--api-latency-ms``, so a
process (one request in flight) cannot reach the limit alone: throughput grows with hosts
until the limit binds. A limit of 10/s binds with 3 hosts; 1,000/s never does. The busiest
1-second window of requests at the fake is reported against the limit. The hosts share this
machine's 2 cores.

The baseline, in the same run against the same fake, is the official ``customerio`` SDK
on a worker host sending the same events one per request, serially. Needs root.
"""

from __future__ import annotations

import argparse
import signal
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
blob = "x" * {op_bytes}
for n in range({messages}):
    with transaction.atomic():  # one message each, as a web request makes
        django_cio.track("{prefix}" + str(n), "scaled", n=n, blob=blob)
"""

SDK = """
import time
from customerio import CustomerIO
sdk = CustomerIO("demo-site", "demo-key", retries=0)
sdk.base_url = "{url}/api/v1"  # the SDK only speaks https; same paths over http
blob = "x" * {op_bytes}
count, started = 0, time.perf_counter()
while time.perf_counter() - started < {seconds}:
    sdk.track("sdk-" + str(count), "scaled", dict(n=count, blob=blob))
    count += 1
print(count / (time.perf_counter() - started))
"""


def run(deployment: Deployment, hosts: int, limit: int, args: argparse.Namespace) -> dict:
    """``args.messages`` queued, then delivered by ``hosts`` worker hosts: ops/s, requests/s,
    the busiest second."""
    deployment.reset_fake(rate_limit=limit, latency_ms=args.api_latency_ms)
    prefix = f"scale-{uuid.uuid4().hex[:6]}-"
    # Queued from the broker's own host, over its loopback: quick, and no worker running.
    fill = FILL.format(messages=args.messages, prefix=prefix, op_bytes=args.op_kb * 1024)
    deployment.django("broker", "shell", "-c", fill, timeout=600,
                      CELERY_BROKER_URL=deployment.env["CELERY_BROKER_URL"]
                      .replace(deployment.hosts["broker"].address, "127.0.0.1"))
    for name in WORKERS[:hosts]:
        deployment.start_worker(name, CLUSTER_RATE_LIMIT=f"{limit}/s")
    try:
        wait_until(lambda: deployment.fake("stats")["events"] >= args.messages, 900,
                   f"{args.messages} events delivered", interval=1)
    finally:
        deployment.stop_workers()
    arrivals = sorted(e["received_at"] for e in deployment.events(prefix))
    seconds = arrivals[-1] - arrivals[0]
    requests = deployment.fake("stats")["requests"]
    return {"ops_per_second": len(arrivals) / seconds, "requests_per_second": requests / seconds,
            "busiest": deployment.busiest_second(), "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--op-kb", type=int, default=20, help="size of each event's data")
    parser.add_argument("--api-latency-ms", type=float, default=500)
    parser.add_argument("--limits", default="10,1000", help="RATE_LIMITs to run, per second")
    parser.add_argument("--json", action="store_true", help="one JSON line for bench/run.py")
    args = parser.parse_args()
    out = output(args.json)
    reason = unavailable()
    if reason:
        print(f"bench/cluster.py: {reason}", file=out)
        sys.exit(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: clean the cluster up
    figures = []
    with tempfile.TemporaryDirectory(prefix="cio-bench-cluster-") as workdir, \
            deployed("redis", Path(workdir), rate_limit=10, workers=()) as deployment:
        deployment.reset_fake(latency_ms=args.api_latency_ms)
        done = deployment.cluster.run(deployment.hosts["worker1"], [
            sys.executable, "-c", SDK.format(url=deployment.api_url, seconds=5,
                                             op_bytes=args.op_kb * 1024)],
            deployment.host_env("worker1"))
        assert done.returncode == 0, done.stderr
        sdk = float(done.stdout)
        print(f"{args.messages:,} messages of one {args.op_kb} KB event, the API answering "
              f"after {args.api_latency_ms:g} ms; baseline: the official SDK from a worker "
              f"host, serially: {sdk:,.2f} ops/s", file=out)
        for limit in (int(limit) for limit in args.limits.split(",")):
            for hosts in (1, 2, 3):
                started = time.monotonic()
                result = run(deployment, hosts, limit, args)
                name = f"{hosts} worker host{'s' if hosts > 1 else ''} x -c 2, limit {limit}/s"
                print(f"{name}: {result['ops_per_second']:,.0f} ops/s "
                      f"({result['ops_per_second'] / sdk:,.0f}x the SDK), "
                      f"{result['requests_per_second']:.1f} requests/s, busiest 1-s window "
                      f"{result['busiest']} (limit {limit}); {time.monotonic() - started:.0f} s",
                      file=out)
                figures += [
                    figure("cluster", f"{name}: ops/s", result["ops_per_second"], "ops/s",
                           baseline=sdk, ratio=result["ops_per_second"] / sdk,
                           note=f"{result['requests_per_second']:.1f} requests/s"),
                    figure("cluster", f"{name}: busiest 1-s window", result["busiest"],
                           "requests", target=f"<= {limit}", met=result["busiest"] <= limit),
                ]
    if args.json:
        emit(figures)


if __name__ == "__main__":
    main()
