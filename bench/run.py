"""Every benchmark, one table: django-cio's figures against the official SDK in the same run.

    python bench/run.py [--quick] [--only NAME ...] [--plots docs/img] [--save results.json]
                        [--load results.json]

Each benchmark runs as its own process (``bench/<name>.py --json``: its report goes to stderr
as it runs, its figures come back as one JSON line), so each keeps its own Django settings.
Then one table is printed: figure, django-cio, the ``customerio`` SDK measured in the same run,
the ratio, the DESIGN §6 target and whether this run met it.

The scale-out runs (``scaling``) are bench/delivery.py's bulk shape with 1, 2, 4, 8 (and 16)
worker processes under one shared limit of ``SCALE_RATE`` requests a second, against a fake
server answering after ``SCALE_LATENCY_MS``: slow enough that a worker process, one request
in flight at a time, cannot reach the limit alone, so throughput rises with processes and then
stays flat at the limit times the ops a request carries. From those runs come two plots (with
matplotlib, the ``bench`` extra; without it the table is printed and the plots skipped):
delivered ops/s and requests/s over time against the limit, for the 8-process run, and
throughput against worker processes. As root, ``cluster`` (bench/cluster.py) adds the same
question across hosts: 1, 2 and 3 worker hosts in network namespaces, over slow, lossy links.

``--quick`` shrinks the sizes (about 3 minutes on 2 cores); without it the sizes are the
documented ones (backfill 1,000,000 rows, web shape 20,000 messages, 1,500 messages per
scale-out run, up to 16 worker processes). ``--save`` keeps every result as JSON;
``--load`` prints the table and draws the plots again from such a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCALE_RATE = 8  # requests/s, the shared limit L of the scale-out runs
SCALE_LATENCY_MS = 500
SCALE_EVIDENCE = 8  # worker processes of the run plotted over time

Json = dict[str, Any]


def plan(quick: bool) -> list[tuple[str, str, list[str]]]:
    """(benchmark, script, arguments) for each run, in order."""
    web = ["--messages", "10000"] if quick else []
    runs = [
        ("fakeserver", "fakeserver.py", ["--seconds", "3" if quick else "5"]),
        ("request_path", "request_path.py",
         ["--latency-ms", "50", "--repeat", "100" if quick else "200"]),
        ("dedup", "dedup.py", ["--people", "100", "--latency-ms", "50"]),
        ("ratelimit", "ratelimit.py",
         ["--limit", "80", "--seconds", "3" if quick else "5", "--processes",
          *(["1", "4", "8"] if quick else ["1", "2", "4", "8"])]),
    ]
    for shape, broker in (("web", "redis"), ("web", "rabbitmq"), ("bulk", "redis"),
                          ("bulk", "rabbitmq")):
        runs.append(("delivery", "delivery.py",
                     ["--shape", shape, "--broker", broker, *(web if shape == "web" else [])]))
    for processes in (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16):
        runs.append(("scaling", "delivery.py",
                     ["--shape", "bulk", "--broker", "redis", "--workers", "1",
                      "--processes", str(processes),
                      "--latency-ms", str(SCALE_LATENCY_MS), "--rate", f"{SCALE_RATE}/s",
                      "--messages", "600" if quick else "1500"]))
    runs.append(("transactional", "transactional.py",
                 ["--messages", "500", "--repeat", "100"] if quick else []))
    runs.append(("workspaces", "workspaces.py",
                 ["--messages", "1500", "--outage-seconds", "10"] if quick else []))
    if os.geteuid() == 0:  # network namespaces: root only
        runs.append(("cluster", "cluster.py", ["--messages", "1500"] if quick else []))
    runs.append(("backfill", "backfill.py",
                 ["--rows", "50000", "--sdk-rows", "500"] if quick else
                 ["--rows", "1000000", "--latency-ms", "20", "--cap", "100",
                  "--batch-size", "5000"]))
    return runs


def run_one(script: str, arguments: list[str]) -> tuple[Json | None, float]:
    """Run one benchmark; its JSON line (None if it failed) and how long it took."""
    command = [sys.executable, str(BENCH / script), *arguments, "--json"]
    print(f"\n$ {' '.join(['python', f'bench/{script}', *arguments])}", file=sys.stderr,
          flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.monotonic() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        print(f"  FAILED (exit {result.returncode})", file=sys.stderr, flush=True)
        return None, seconds
    return json.loads(lines[-1]), seconds


def scaling_figures(runs: list[Json]) -> list[Json]:
    """Table rows of the scale-out runs: throughput against L x ops/request, busiest second."""
    figures = []
    for run in runs:
        expected = run["limit"] * run["ops_per_request"]
        share = run["ops_per_second"] / expected
        bound = run["processes"] >= SCALE_EVIDENCE
        plural = "es" if run["processes"] > 1 else ""
        name = f"{run['processes']} worker process{plural}, limit L={run['limit']:g}/s"
        figures += [
            {"bench": "scale-out", "name": f"{name}: ops/s", "ours": run["ops_per_second"],
             "unit": "ops/s", "baseline": run["sdk_ops_per_second"],
             "ratio": run["ops_per_second"] / run["sdk_ops_per_second"],
             "target": f"~ L x {run['ops_per_request']:,.0f} ops/req = {expected:,.0f}"
             if bound else "", "met": share >= 0.9 if bound else None,
             "note": f"{share:.0%} of L x ops/request"},
            {"bench": "scale-out", "name": f"{name}: busiest 1-s window",
             "ours": run["busiest_second"], "unit": "requests", "baseline": None,
             "ratio": None, "target": f"<= L = {run['limit']:g}",
             "met": run["busiest_second"] <= run["limit"],
             "note": f"{run['busiest_second_sent']} as sent, "
                     f"{run['busiest_second_booked']} as booked by the limiter"},
        ]
    return figures


def number(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    return f"{value:,.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 \
        else f"{value:.2f}"


def table(figures: list[Json]) -> str:
    """The figures as a Markdown table (it reads as well in a terminal)."""
    header = ["benchmark", "figure", "django-cio", "customerio SDK (same run)", "ratio",
              "target", "met"]
    rows = []
    for f in figures:
        unit = f" {f['unit']}" if f["unit"] else ""
        met = {True: "yes", False: "**NO**", None: ""}[f["met"]]
        ratio = f"{number(f['ratio'])}x" if f["ratio"] is not None else ""
        name = f["name"] + (f" ({f['note']})" if f.get("note") else "")
        rows.append([f["bench"], name, number(f["ours"]) + unit,
                     number(f["baseline"]) + (unit if f["baseline"] is not None else ""),
                     ratio, f["target"], met])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width)
                               for cell, width in zip(row, widths, strict=True)) + " |"
             for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def scaling_table(runs: list[Json]) -> str:
    lines = ["| worker processes | ops/s | requests/s | ops/request | L x ops/request | "
             "share | busiest 1-s window: booked / sent / received | limit L | "
             "slot to send: median / max |", "|---" * 9 + "|"]
    for run in runs:
        expected = run["limit"] * run["ops_per_request"]
        lines.append(
            f"| {run['processes']} | {run['ops_per_second']:,.0f} | "
            f"{run['requests'] / run['seconds']:.1f} | {run['ops_per_request']:,.0f} | "
            f"{expected:,.0f} | {run['ops_per_second'] / expected:.0%} | "
            f"{run['busiest_second_booked']} / {run['busiest_second_sent']} / "
            f"{run['busiest_second']} | {run['limit']:g} | {delays(run)} |")
    return "\n".join(lines)


def delays(run: Json) -> str:
    """Median and longest wait from a limiter slot to its request leaving the worker."""
    waits = sorted(delay for _, delay in run.get("send_delays", []))
    if not waits:
        return ""
    return f"{waits[len(waits) // 2] * 1000:.0f} / {waits[-1] * 1000:.0f} ms"


def plot(runs: list[Json], directory: Path) -> list[Path]:
    """The two PNGs; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    evidence = next((run for run in runs if run["processes"] == SCALE_EVIDENCE), runs[-1])
    limit, per_request = evidence["limit"], evidence["ops_per_request"]
    timeline = evidence["timeline"]  # [arrival, answered, ops, status], seconds from the first
    span = math.ceil(max(row[1] for row in timeline))
    edges = list(range(span + 1))
    requests, ops = [0] * span, [0] * span
    for arrived, answered, count, _ in timeline:
        requests[min(int(arrived), span - 1)] += 1
        ops[min(int(answered), span - 1)] += count
    arrivals = sorted(row[0] for row in timeline)
    trailing = [sum(1 for before in arrivals[: index + 1] if moment - before < 1.0)
                for index, moment in enumerate(arrivals)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.stairs(requests, edges, label="requests arriving at the fake server, per second")
    top.plot(arrivals, trailing, drawstyle="steps-post", linewidth=0.8, color="gray",
             label="requests in the trailing 1-s window")
    top.axhline(limit, color="red", linestyle="--", label=f"limit L = {limit:g} requests/s")
    top.set_ylabel("requests/s")
    top.set_ylim(0, limit * 1.6)
    top.legend(loc="lower center", fontsize="small")
    bottom.stairs(ops, edges, color="green", label="ops delivered, per second")
    bottom.axhline(limit * per_request, color="red", linestyle="--",
                   label=f"L x {per_request:,.0f} ops/request = {limit * per_request:,.0f}")
    bottom.set_ylabel("ops/s")
    bottom.set_ylim(0, limit * per_request * 1.5)
    bottom.set_xlabel("seconds since the first request (1-s bins)")
    bottom.legend(loc="lower center", fontsize="small")
    figure.suptitle(f"Delivery over time: {evidence['processes']} worker processes, bulk shape, "
                    f"fake server {evidence['latency_ms']:g} ms, shared limit {limit:g}/s")
    figure.tight_layout()
    path = directory / "bench-throughput-over-time.png"
    figure.savefig(path, dpi=100)
    written.append(path)
    plt.close(figure)

    processes = [run["processes"] for run in runs]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(processes, [run["ops_per_second"] for run in runs], marker="o", color="green",
             label="ops/s delivered")
    top.plot(processes, [run["limit"] * run["ops_per_request"] for run in runs],
             color="red", linestyle="--", label="L x ops/request")
    top.set_ylabel("ops/s")
    top.set_ylim(0, max(run["limit"] * run["ops_per_request"] for run in runs) * 1.3)
    top.legend(loc="lower right")
    bottom.plot(processes, [run["busiest_second"] for run in runs], marker="o",
                label="busiest 1-s window, received by the fake server")
    bottom.plot(processes, [run["busiest_second_sent"] for run in runs], marker="x",
                linestyle=":", label="busiest 1-s window, sent by the workers")
    bottom.plot(processes, [run["busiest_second_booked"] for run in runs], marker="+",
                linestyle="-.", label="busiest 1-s window, slots booked by the limiter")
    bottom.axhline(runs[0]["limit"], color="red", linestyle="--",
                   label=f"limit L = {runs[0]['limit']:g}")
    bottom.set_ylabel("requests")
    bottom.set_ylim(0, runs[0]["limit"] * 1.5)
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(processes, [str(n) for n in processes])
    bottom.set_xlabel("worker processes")
    bottom.legend(loc="lower right", fontsize="small")
    figure.suptitle(f"Throughput against worker processes: bulk shape, fake server "
                    f"{runs[0]['latency_ms']:g} ms, shared limit {runs[0]['limit']:g}/s")
    figure.tight_layout()
    path = directory / "bench-throughput-vs-workers.png"
    figure.savefig(path, dpi=100)
    written.append(path)
    plt.close(figure)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes")
    names = sorted({name for name, _, _ in plan(False)})
    parser.add_argument("--only", nargs="+", choices=names, help="run only these benchmarks")
    parser.add_argument("--plots", type=Path, default=ROOT / "docs" / "img",
                        help="folder for the PNGs (default docs/img)")
    parser.add_argument("--save", type=Path, help="also write every result as JSON here")
    parser.add_argument("--load", type=Path,
                        help="run nothing: tabulate and plot what --save wrote")
    args = parser.parse_args()

    started = time.monotonic()
    if args.load:
        saved = json.loads(args.load.read_text())
        results, args.quick = saved["results"], saved["quick"]
    else:
        results = []
        for name, script, arguments in plan(args.quick):
            if args.only and name not in args.only:
                continue
            result, seconds = run_one(script, arguments)
            results.append({"bench": name, "arguments": arguments, "seconds": seconds,
                            "result": result})
    figures: list[Json] = []
    scaling: list[Json] = []
    failed = []
    for entry in results:
        name, result = entry["bench"], entry["result"]
        if result is None:
            failed.append(f"{name} ({' '.join(entry['arguments'])})")
        elif name == "scaling":
            scaling.append(result)
        else:
            figures += result["figures"]
    figures += scaling_figures(scaling)
    total = saved["seconds"] if args.load else time.monotonic() - started

    print(f"\ndjango-cio benchmarks ({'--quick' if args.quick else 'full sizes'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {total / 60:.1f} min")
    print(table(figures))
    if scaling:
        print("\nScale-out: bulk shape, Redis broker, fake server "
              f"{SCALE_LATENCY_MS} ms, one shared limit L = {SCALE_RATE} requests/s")
        print(scaling_table(scaling))
    if failed:
        print("\nFAILED: " + "; ".join(failed))
    if scaling:
        print()
        try:
            for path in plot(scaling, args.plots):
                print(f"plot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install django-cio[bench])")
    if args.save and not args.load:
        args.save.write_text(json.dumps({"quick": args.quick, "seconds": total,
                                         "results": results}, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
