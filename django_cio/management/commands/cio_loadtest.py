from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import Resolver404, resolve

from django_cio import loadtest
from django_cio.conf import get_settings
from django_cio.exceptions import ConfigurationError


class Command(BaseCommand):
    help = (
        "Load-test this project end to end: drive its views with a ramp of requests per second "
        "(Locust, headless) while gunicorn serves it and Celery workers deliver to the bundled "
        "fake Customer.io Track API; report app latency, enqueue-to-delivered latency, 429s, "
        "errors and delivered/expected, and write loadtest.csv and loadtest.html. Exit status: "
        "0 within the limits, 1 a limit breached or the run failed, 2 usage error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stages", default=loadtest.DEFAULT_STAGES, metavar="RATE:SECONDS,...",
                            help="Requests per second and for how long, in turn (default "
                            f"{loadtest.DEFAULT_STAGES}).")
        parser.add_argument("--path", action="append", default=[], metavar="'[METHOD] PATH [N]'",
                            help="A request each simulated visitor makes in turn, about one a "
                            "second (repeatable), and N, the Customer.io events it makes for the "
                            "visitor's person. Default: the example project's load-test views.")
        parser.add_argument("--first-path", metavar="'[METHOD] PATH [N]'",
                            help="Requested once by each visitor before its --path requests "
                            "(a sign-up, say).")
        parser.add_argument("--host", help="The app's URL, if already running (default: "
                            "gunicorn serves this project on a free loopback port).")
        parser.add_argument("--web-workers", type=int, default=2,
                            help="gunicorn worker processes, 4 threads each (default 2).")
        parser.add_argument("--workers", type=int, default=2,
                            help="Pool processes of the Celery worker started to deliver "
                            "(default 2).")
        parser.add_argument("--no-workers", action="store_true",
                            help="Start no workers: yours deliver (needs --track-url).")
        parser.add_argument("--celery-app", help="What `celery -A` takes (default: the "
                            "package of DJANGO_SETTINGS_MODULE).")
        parser.add_argument("--track-url", help="The Track API the workers send to (default: "
                            "the bundled fake server, started here).")
        parser.add_argument("--allow-remote-host", action="store_true",
                            help="Let --host name a server that is not on this machine.")
        parser.add_argument("--allow-real-customerio", action="store_true",
                            help="Allow a --track-url that is not on this machine.")
        parser.add_argument("--workspace", default="default", metavar="NAME",
                            help="The workspace the load test's people and events go to "
                            "(default: default). Every workspace is pointed at the run's Track "
                            "API, each a site of the fake server.")
        parser.add_argument("--fake-latency-ms", type=float, default=50,
                            help="The bundled fake server's answer time (default 50).")
        parser.add_argument("--fake-rate-limit", type=float, default=100,
                            help="Requests/s above which it answers 429 (default 100; 0: none).")
        parser.add_argument("--drain-timeout", type=float, default=60,
                            help="Seconds to wait after the ramp for every event (default 60).")
        parser.add_argument("--cleanup", action="store_true",
                            help="Delete the persons this run made (django_cio.delete).")
        parser.add_argument("--out", default="cio-loadtest",
                            help="Folder for the reports and logs (default ./cio-loadtest).")
        parser.add_argument("--p95-ms", type=float, default=loadtest.LIMITS["p95_ms"],
                            help="App latency p95 must stay below this (default 500).")
        parser.add_argument("--p99-ms", type=float, default=loadtest.LIMITS["p99_ms"],
                            help="App latency p99 must stay below this (default 2000).")
        parser.add_argument("--max-errors", type=int, default=int(loadtest.LIMITS["errors"]),
                            help="Failed app requests must stay below this (default 50).")
        parser.add_argument("--delivery-p95-ms", type=float,
                            help="Enqueue-to-delivered p95 must stay below this (default: none).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            plan = self.plan(options)
        except loadtest.UsageError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if threading.current_thread() is threading.main_thread():
            # Stopped like Ctrl-C, so that what it started is stopped too.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            result = loadtest.LoadTest(plan, self.stdout.write).run()
        except loadtest.RunFailed as exc:
            raise CommandError(f"load test failed: {exc}") from None
        except KeyboardInterrupt:
            raise CommandError("interrupted; what it had started is stopped") from None
        rows = loadtest.report_rows(plan, result)
        loadtest.write_report(plan, result, rows)
        self.stdout.write("\n" + loadtest.format_table(rows) + "\n")
        self.stdout.write(f"Reports: {plan.out / 'loadtest.csv'}, {plan.out / 'loadtest.html'}, "
                          f"{plan.out / 'locust.html'}")
        breaches = list(loadtest.iter_breaches(rows))
        if breaches:
            raise CommandError("limits breached: " + "; ".join(breaches))
        self.stdout.write(self.style.SUCCESS("Load test OK."))

    def plan(self, options: dict[str, Any]) -> loadtest.Plan:
        paths = [loadtest.PathSpec.parse(text) for text in options["path"]]
        first = options["first_path"] and loadtest.PathSpec.parse(options["first_path"])
        if not paths and not first and _has_example_views():
            first = loadtest.PathSpec.parse(loadtest.EXAMPLE_FIRST)
            paths = [loadtest.PathSpec.parse(text) for text in loadtest.EXAMPLE_PATHS]
        if not paths:
            raise loadtest.UsageError("--path: name the views to drive (they must make people "
                                      "or events for the visitor; see docs/loadtest.md)")
        if options["track_url"]:
            loadtest.check_track_url(options["track_url"], options["allow_real_customerio"])
        elif options["no_workers"]:
            raise loadtest.UsageError("--no-workers: give --track-url, where your workers send")
        if options["host"] and not options["host"].startswith(("http://", "https://")):
            raise loadtest.UsageError(f"--host {options['host']!r}: expected http(s)://host:port")
        if options["host"] and not (loadtest.is_loopback(options["host"])
                                    or options["allow_remote_host"]):
            raise loadtest.UsageError(f"--host {options['host']}: not on this machine; pass "
                                      "--allow-remote-host to load a server elsewhere")
        for name in ("web_workers", "workers"):
            if options[name] < 1:
                raise loadtest.UsageError(f"--{name.replace('_', '-')}: at least 1")
        loadtest.check_installed("locust", *([] if options["host"] else ["gunicorn"]))
        settings_module = os.environ.get("DJANGO_SETTINGS_MODULE", "")
        limits = {"p95_ms": options["p95_ms"], "p99_ms": options["p99_ms"],
                  "errors": float(options["max_errors"])}
        if options["delivery_p95_ms"] is not None:
            limits["delivery_p95_ms"] = options["delivery_p95_ms"]
        return loadtest.Plan(
            stages=loadtest.parse_stages(options["stages"]), paths=paths, first=first or None,
            host=options["host"], web_workers=options["web_workers"],
            workers=0 if options["no_workers"] else options["workers"],
            celery_app=options["celery_app"] or settings_module.partition(".")[0],
            track_url=options["track_url"], workspace=_workspace(options["workspace"]),
            fake_latency_ms=options["fake_latency_ms"],
            fake_rate_limit=options["fake_rate_limit"] or None,
            drain_timeout=options["drain_timeout"], cleanup=options["cleanup"],
            out=Path(options["out"]), limits=limits,
        )


def _has_example_views() -> bool:
    try:
        return all(resolve(spec.split()[1]) for spec in (
            loadtest.EXAMPLE_FIRST, *loadtest.EXAMPLE_PATHS))
    except Resolver404:
        return False


def _workspace(name: str) -> str:
    try:
        get_settings(name)
    except ConfigurationError as exc:
        raise loadtest.UsageError(f"--workspace: {exc}") from None
    return name
