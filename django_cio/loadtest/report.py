"""The numbers of a run judged against their limits, as a table, ``loadtest.csv`` and
``loadtest.html``."""

from __future__ import annotations

import csv
import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .plan import Plan


@dataclass
class Row:
    metric: str
    value: float | None
    unit: str = ""
    limit: float | None = None  # the value must stay below it
    note: str = ""
    checked: bool = False  # judged (``limit`` set, or a rule of its own)
    breached: bool = False

    @property
    def verdict(self) -> str:
        return "BREACHED" if self.breached else "ok" if self.checked or self.limit else ""

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if self.unit == "ms":
            return f"{self.value:,.1f} ms" if self.value < 100 else f"{self.value:,.0f} ms"
        return f"{self.value:,.0f}" if self.value == int(self.value) else f"{self.value:,.1f}"

    def shown_limit(self) -> str:
        return "" if self.limit is None else f"< {self.limit:g}{' ms' if self.unit else ''}"


def report_rows(plan: Plan, result: dict[str, Any]) -> list[Row]:
    app, delivery, limits = result["app"], result["delivery"], plan.limits
    errors = app["failures"] + app["exceptions"]
    rate = app["requests"] / app["duration"] if app["duration"] else 0
    rows = [
        Row("app requests", app["requests"], note=f"{rate:.1f}/s over {app['duration']:.0f} s"),
        Row("app latency p50", app["percentiles_ms"]["p50"], "ms"),
        Row("app latency p95", app["percentiles_ms"]["p95"], "ms", limits["p95_ms"]),
        Row("app latency p99", app["percentiles_ms"]["p99"], "ms", limits["p99_ms"]),
        Row("app errors", errors, limit=limits["errors"], note="failed requests"),
    ]
    if errors and errors >= app["requests"]:  # however few, a run of failures tells nothing
        rows[-1].note, rows[-1].breached = "every request failed", True
    delivered, expected = delivery["delivered"], delivery["expected"]
    events = Row("events delivered", delivered, note=f"of {expected:,} expected", checked=True)
    events.breached = delivered is not None and delivered < expected
    if delivered is not None and delivered > expected:
        events.note += "; the extra are from requests that failed after queueing"
    rows.append(events)
    lag = delivery["latency_ms"]
    rows += [
        Row("enqueue-to-delivered p50", lag["p50"], "ms"),
        Row("enqueue-to-delivered p95", lag["p95"], "ms", limits.get("delivery_p95_ms")),
        Row("enqueue-to-delivered p99", lag["p99"], "ms"),
    ]
    before, after = result.get("track_stats_before"), result.get("track_stats_after")
    if before and after:
        statuses = {code: n - before["statuses"].get(code, 0)
                    for code, n in after["statuses"].items()}
        failed = sum(n for code, n in statuses.items() if int(code) >= 400 and code != "429")
        rows += [
            Row("Track API requests", after["requests"] - before["requests"],
                note=f"{after['ops_total'] - before['ops_total']:,} ops"),
            Row("Track API 429s", statuses.get("429", 0), note="rate limited"),
            Row("Track API errors", failed, note="4xx/5xx other than 429 (retried or dead)"),
            Row("duplicate event ids", after["duplicate_event_ids"] - before[
                "duplicate_event_ids"], note="dropped by Customer.io's event id dedup"),
        ]
    else:
        rows.append(Row("Track API 429s", None, note="real Track API: see Customer.io"))
    rows.append(Row("persons created", app["persons"], note=f"ids {plan.prefix}*"))
    if "cleanup" in result:
        rows.append(Row("persons left after cleanup", result["cleanup"]["left"]))
    for row in rows:
        row.breached = row.breached or (
            row.limit is not None and row.value is not None and row.value >= row.limit)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'metric':<28}{'value':>12}  {'limit':<11}{'verdict':<10}note"]
    for row in rows:
        lines.append(f"{row.metric:<28}{row.shown():>12}  {row.shown_limit():<11}"
                     f"{row.verdict:<10}{row.note}")
    return "\n".join(lines)


def write_report(plan: Plan, result: dict[str, Any], rows: list[Row]) -> None:
    with (plan.out / "loadtest.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["metric", "value", "unit", "limit", "verdict", "note"])
        for row in rows:
            writer.writerow([row.metric, "" if row.value is None else round(row.value, 3), row.unit,
                             "" if row.limit is None else row.limit, row.verdict, row.note])
    cells = "".join(
        f"<tr class='{'bad' if row.breached else ''}'><td>{html.escape(row.metric)}</td>"
        f"<td>{html.escape(row.shown())}</td><td>{html.escape(row.shown_limit())}</td>"
        f"<td>{row.verdict}</td><td>{html.escape(row.note)}</td></tr>" for row in rows)
    stages = ", ".join(f"{s.rate}/s for {s.seconds:g} s" for s in plan.stages)
    errors = "".join(f"<li>{e['count']} x {html.escape(e['request'])}: {html.escape(e['error'])}"
                     "</li>" for e in result["app"]["errors"])
    (plan.out / "loadtest.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>cio_loadtest</title><style>"
        "body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}"
        ".bad{background:#fdd}</style><h1>cio_loadtest</h1>"
        f"<p>Stages: {stages}. Person ids: <code>{html.escape(plan.prefix)}*</code>.</p>"
        "<table><tr><th>metric</th><th>value</th><th>limit</th><th>verdict</th><th>note</th>"
        f"</tr>{cells}</table>{f'<h2>Failed requests</h2><ul>{errors}</ul>' if errors else ''}"
        "<p>Requests in detail: <a href='locust.html'>Locust's report</a>, "
        "<code>locust_stats.csv</code>, <code>locust_stats_history.csv</code>.</p>",
        encoding="utf-8")


def iter_breaches(rows: list[Row]) -> Iterator[str]:
    for row in rows:
        if row.breached:
            yield f"{row.metric} {row.shown()}" + (
                f" (limit {row.limit:g})" if row.value is not None and row.limit is not None
                and row.value >= row.limit else f" ({row.note})")
