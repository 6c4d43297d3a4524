"""Locust as a library, in a process of its own (``python -c "import locust; ..."``): importing
locust monkey-patches the whole process with gevent, which Django code must not run under."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .plan import HEADER, PathSpec, Stage


def locust_main(config_json: str) -> None:
    """Run the stages against the app; write Locust's CSVs and HTML and ``locust-summary.json``.

    Started as ``python -c "import locust; ..."`` so that gevent patches the process before
    anything else is imported (ssl and requests included)."""
    import gevent
    from locust import FastHttpUser, LoadTestShape, poisson, task
    from locust.env import Environment
    from locust.html import get_html_report
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter, stats_history

    config = json.loads(config_json)
    out = Path(config["out"])
    stages = [Stage(**stage) for stage in config["stages"]]
    paths = [PathSpec(**spec) for spec in config["paths"]]
    first = PathSpec(**config["first"]) if config["first"] else None
    tally = {"persons": 0, "expected_events": 0}
    times: list[float] = []

    class Stages(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            elapsed, end, previous = self.get_run_time(), 0.0, 0
            for stage in stages:
                end += stage.seconds
                if elapsed < end:  # about a second to reach the stage's rate, up or down
                    return stage.rate, float(max(abs(stage.rate - previous), 1))
                previous = stage.rate
            return None

    class Visitor(FastHttpUser):
        # One request a second on average, at random: visitors together arrive as a Poisson
        # process, with the bursts of real traffic (not all in step, as with a fixed pace).
        host = config["host"]
        wait_time = poisson(1)

        def on_start(self) -> None:
            self.person = f"{config['prefix']}{tally['persons']:05d}"
            tally["persons"] += 1
            self.todo = [first] if first else []
            self.wait()  # visitors started together do not all begin at once

        @task
        def visit(self) -> None:
            self.todo = self.todo or list(paths)
            spec = self.todo.pop(0)
            response = self.client.request(spec.method, spec.path, name=spec.label,
                                           headers={HEADER: self.person})
            if 200 <= response.status_code < 400 and not getattr(response, "error", None):
                tally["expected_events"] += spec.events

    def on_request(response_time: float, **kwargs: Any) -> None:
        times.append(response_time)

    # Ramp-downs and the end let a visitor finish its request (and count it) before it stops.
    env = Environment(user_classes=[Visitor], shape_class=Stages(), host=config["host"],
                      stop_timeout=10)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, str(out / "locust"))
    background = [gevent.spawn(writer), gevent.spawn(stats_history, runner),
                  gevent.spawn(_progress, runner)]
    started = time.monotonic()
    runner.start_shape()
    shape = runner.shape_greenlet
    if shape is not None:
        shape.join()
    duration = time.monotonic() - started
    gevent.sleep(1.2)  # one more round of the CSV writer, with the final numbers
    runner.quit()
    gevent.killall(background)
    writer.close_files()
    (out / "locust.html").write_text(get_html_report(env, show_download_link=False),
                                     encoding="utf-8")
    total = env.stats.total
    errors: list[dict[str, Any]] = sorted(
        ({"request": error.name, "error": str(error.error),
          "count": error.occurrences} for error in env.stats.errors.values()),
        key=lambda row: -row["count"])
    summary = {
        "requests": total.num_requests, "failures": total.num_failures,
        "exceptions": sum(row["count"] for row in runner.exceptions.values()),
        "duration": duration, "percentiles_ms": percentiles(times),
        "persons": tally["persons"], "expected_events": tally["expected_events"],
        "errors": errors[:10],
    }
    (out / "locust-summary.json").write_text(json.dumps(summary, indent=2))


def _progress(runner: Any) -> None:
    import gevent

    started = time.monotonic()
    while True:
        gevent.sleep(5)
        total = runner.stats.total
        print(f"  {time.monotonic() - started:5.0f} s  {runner.user_count:4d} visitors  "
              f"{total.current_rps:6.1f} requests/s  {total.num_requests:7d} requests  "
              f"{total.num_failures} failed", flush=True)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 by nearest rank (``None`` with no values)."""
    ordered = sorted(values)

    def rank(q: float) -> float | None:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}
