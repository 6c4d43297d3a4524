"""A load test run: serve the project, warm it up, ramp Locust up, then wait for every op to
reach the fake server and measure the lag."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from .fakeview import FakeView, created_at
from .plan import HEADER, WARM_UP_EVENT, PathSpec, Plan
from .processes import Processes, free_port, stop
from .swarm import percentiles

# locust first: its gevent patching must come before ssl, requests and the rest are imported.
_LOCUST = ("import locust, sys; from django_cio.loadtest.swarm import locust_main as m; "
           "m(sys.argv[1])")
_WORKER = "import sys; from django_cio.loadtest.run import worker_main as m; m(sys.argv[1:])"
# The CUSTOMERIO settings the run's processes use in place of the project's (JSON), passed in
# the environment: never on a command line, where ``ps`` shows it to every user.
SETTINGS_ENV = "CIO_LOADTEST_CUSTOMERIO"
# The workspace the load test's ops go to (``--workspace``), read by ``route``, the ROUTER of
# the run's processes.
WORKSPACE_ENV = "CIO_LOADTEST_WORKSPACE"
ROUTER = "django_cio.loadtest.run.route"


def route(op: Any) -> str | None:
    """The ROUTER of a load test's processes: ops no call or registration routed go to the
    workspace the run names."""
    return os.environ.get(WORKSPACE_ENV) or None


def _pointed(values: dict[str, Any] | None, site_id: str | None, track_url: str,
             queue: str) -> dict[str, Any]:
    """A workspace's settings for the run: the run's Track API (its fake site, if it runs
    one) and queue."""
    pointed = {**(values or {}), "TRACK_URL": track_url, "QUEUE": queue}
    if site_id is not None:
        pointed |= {"SITE_ID": site_id, "API_KEY": "loadtest-key"}
    return pointed


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _use_run_settings() -> None:
    from django.conf import settings

    changes = os.environ.get(SETTINGS_ENV)
    if changes:
        settings.CUSTOMERIO = {**getattr(settings, "CUSTOMERIO", {}), **json.loads(changes)}


def worker_main(argv: list[str]) -> None:
    """``celery`` with the run's settings: whatever the project's settings say, these workers
    deliver where the load test points them, from the run's own queue."""
    from celery.bin.celery import main

    _use_run_settings()
    sys.argv = ["celery", *argv]
    main()


def wsgi_application() -> Any:
    """The project's WSGI app as ``runserver`` finds it (``WSGI_APPLICATION``, or Django's)."""
    import django

    django.setup()
    _use_run_settings()
    from django.core.servers.basehttp import get_internal_wsgi_application

    return get_internal_wsgi_application()


class RunFailed(Exception):
    """The run could not be carried out (the message says what to look at)."""


class LoadTest:
    def __init__(self, plan: Plan, say: Callable[[str], Any]) -> None:
        self.plan, self.say = plan, say
        self.fake: FakeView | None = None
        self.warm_up_person = f"{plan.prefix}warm-up"  # its events are not counted
        self.result: dict[str, Any] = {"prefix": plan.prefix}

    def run(self) -> dict[str, Any]:
        from django.conf import settings
        from django.test.utils import override_settings

        from ..conf import DEFAULT_WORKSPACE, get_settings
        from ..fakeserver import FakeTrackAPI

        plan = self.plan
        plan.out.mkdir(parents=True, exist_ok=True)
        config = get_settings()
        with contextlib.ExitStack() as stack:
            changes: dict[str, Any] = {"BACKEND": "django_cio.backends.http.TrackAPIBackend",
                                       "ROUTER": ROUTER}
            track_url = plan.track_url
            sites: dict[str, str | None] = dict.fromkeys(config.workspace_names)  # fake sites
            if track_url is None:
                # Entered first, so stopped last: the workers finish delivering to it. Never
                # the project's credentials: the fake needs none, and the limiter's key (from
                # SITE_ID) must not be the real workspace's. A site per workspace.
                rate = plan.fake_rate_limit
                faults: dict[str, Any] = {"latency_ms": plan.fake_latency_ms, "rate_limit": rate,
                                           "schemas": False}  # ~0.1 ms an op: throughput first
                fake = stack.enter_context(FakeTrackAPI(
                    site_id=f"{plan.prefix}site", api_key="loadtest-key", **faults))
                for name in config.workspaces:
                    fake.add_site(f"{plan.prefix}site-{name}", "loadtest-key", **faults)
                sites = {name: f"{plan.prefix}site" + ("" if name == DEFAULT_WORKSPACE
                                                        else f"-{name}") for name in sites}
                track_url = fake.url
                cap = f"429 above {rate:g} req/s" if rate else "no rate cap"
                self.say(f"Fake Customer.io Track API on {track_url} "
                         f"({plan.fake_latency_ms:g} ms an answer, {cap}); the load test's "
                         f"people go to workspace {plan.workspace!r}")
            self.fake = FakeView.connect(track_url, sites[plan.workspace])
            # Every workspace points at the run's Track API, and has a queue of the run's own:
            # a worker of yours that is running takes none of its messages, and what a
            # timeout leaves behind reaches no real workspace.
            own_queues = bool(plan.workers and not plan.host)
            queue = f"{config.queue}-{plan.prefix.rstrip('-')}" if own_queues else config.queue
            changes |= _pointed(None, sites[DEFAULT_WORKSPACE], track_url, queue)
            changes["WORKSPACES"] = {
                name: _pointed(values, sites[name], track_url,
                               f"{queue}.{name}" if own_queues else get_settings(name).queue)
                for name, values in config.workspaces.items()}
            # This process (warm-up, cleanup), gunicorn and the workers, all alike.
            project = getattr(settings, "CUSTOMERIO", {})
            stack.enter_context(override_settings(CUSTOMERIO={**project, **changes}))
            processes = stack.enter_context(Processes(plan.out))
            processes.env[SETTINGS_ENV] = json.dumps(changes)
            processes.env[WORKSPACE_ENV] = plan.workspace
            stack.enter_context(_environ(WORKSPACE_ENV, plan.workspace))  # this process's ops
            queues = [get_settings(name).queue for name in config.workspace_names]
            if plan.workers:
                processes.start("worker", [
                    sys.executable, "-c", _WORKER, "-A", plan.celery_app,
                    "worker", "-Q", ",".join(queues), "-c", str(plan.workers), "-l", "WARNING",
                    "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
                    "--without-heartbeat"])
                self.say(f"{plan.workers} Celery worker process(es) of {plan.celery_app!r} "
                         f"delivering to it (log: {plan.out / 'worker.log'})")
            host = plan.host or self._serve(processes)
            self._warm_up(host)
            self.result["track_stats_before"] = self.fake.stats() if self.fake else None
            self.result["app"] = self._ramp(processes, host)
            self.result["delivery"] = self._drain(self.result["app"]["expected_events"])
            self.result["track_stats_after"] = self.fake.stats() if self.fake else None
            if plan.cleanup:
                self.result["cleanup"] = self._cleanup(self.result["app"]["persons"])
        return self.result

    def _serve(self, processes: Processes) -> str:
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        import gunicorn.config

        # Keep-alive longer than a visitor's pauses: gunicorn's 2 s default closes connections
        # the client is about to reuse, and those requests fail in the client, not the app.
        options = ["--workers", str(self.plan.web_workers), "--worker-class", "gthread",
                   "--threads", "4", "--keep-alive", "75", "--graceful-timeout", "10"]
        if hasattr(gunicorn.config, "ControlSocket"):  # gunicorn 24+: one per run, not $HOME's
            options.append("--no-control-socket")
        gunicorn = processes.start("gunicorn", [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *options,
            "django_cio.loadtest.run:wsgi_application()"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if gunicorn.poll() is not None:
                raise RunFailed(f"gunicorn exited ({gunicorn.returncode}); "
                                f"see {self.plan.out / 'gunicorn.log'}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    self.say(f"The app on {host} (gunicorn, {self.plan.web_workers} workers)")
                    return host
            time.sleep(0.2)
        raise RunFailed(f"gunicorn not listening after 60 s; see {self.plan.out / 'gunicorn.log'}")

    def _warm_up(self, host: str, timeout: float = 90) -> None:
        """Before the ramp, a few requests of each path (first requests load code and open
        connections: not what is measured), and one event through broker and workers: they
        are up and deliver where they should, or the run stops here with a reason."""
        from ..operations import Event
        from ..producer import batch, enqueue

        with batch():
            enqueue(Event(self.warm_up_person, WARM_UP_EVENT, {}))
        expected = 1 + self._warm_app(host)
        if self.fake is None:
            return  # a real Track API cannot be asked what arrived
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # All of them, so that the Track API counts from here on are the ramp's alone.
            events = [e for e in self.fake.events(self.plan.prefix)
                      if e["person"] == self.warm_up_person]
            if len(events) >= expected:
                self.say(f"Warm-up: {len(events)} event(s) delivered, the pipeline is up")
                return
            time.sleep(0.25)
        where = self.plan.out / "worker.log" if self.plan.workers else "your workers' logs"
        raise RunFailed(f"warm-up events did not reach {self.fake.url} within {timeout:.0f} s "
                        f"({len(events)} of {expected}); see {where}")

    def _warm_app(self, host: str) -> int:
        """A few requests of each path at once; the events they should make."""
        from concurrent.futures import ThreadPoolExecutor

        import requests

        def call(spec: PathSpec) -> tuple[int, str]:
            try:
                status = requests.request(spec.method, host + spec.path, timeout=30,
                                          headers={HEADER: self.warm_up_person}).status_code
            except requests.RequestException as exc:
                return 0, f"{spec.label}: {type(exc).__name__}"
            return (0, f"{spec.label}: HTTP {status}") if status >= 400 else (spec.events, "")

        specs = [spec for spec in (self.plan.first, *self.plan.paths) if spec]
        threads = 4 * self.plan.web_workers
        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(call, specs * threads))
        for problem in sorted({problem for _, problem in answers if problem}):
            self.say(f"Warning: warm-up request {problem}")
        return sum(events for events, _ in answers)

    def _ramp(self, processes: Processes, host: str) -> dict[str, Any]:
        plan = self.plan
        config = {"host": host, "prefix": plan.prefix, "out": str(plan.out),
                  "stages": [asdict(stage) for stage in plan.stages],
                  "paths": [asdict(spec) for spec in plan.paths],
                  "first": asdict(plan.first) if plan.first else None}
        stages = ", ".join(f"{stage.rate}/s for {stage.seconds:g} s" for stage in plan.stages)
        self.say(f"Ramp: {stages}; visitors' person ids start with {plan.prefix!r}")
        summary = plan.out / "locust-summary.json"
        summary.unlink(missing_ok=True)
        with (plan.out / "locust.log").open("wb") as log:
            # Its progress lines go to this terminal; Locust's own logging to locust.log.
            locust = subprocess.Popen(  # noqa: S603
                [sys.executable, "-c", _LOCUST, json.dumps(config)], env=processes.env,
                stderr=log, start_new_session=True)
        try:
            locust.wait(timeout=plan.seconds + 120)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"Locust did not finish; see {plan.out / 'locust.log'}") from None
        finally:
            stop(locust)
        if locust.returncode != 0 or not summary.exists():
            raise RunFailed(f"Locust failed ({locust.returncode}); see {plan.out / 'locust.log'}")
        result: dict[str, Any] = json.loads(summary.read_text())
        return result

    def _drain(self, expected: int) -> dict[str, Any]:
        if self.fake is None:  # a real Track API: at least let the workers empty the queue
            self._wait_for_empty_queue()
            return {"expected": expected, "delivered": None, "latency_ms": percentiles([])}
        self.say(f"Waiting up to {self.plan.drain_timeout:g} s for {expected} event(s) "
                 "to arrive ...")
        deadline = time.monotonic() + self.plan.drain_timeout
        while True:
            events = [e for e in self.fake.events(self.plan.prefix)
                      if e["person"] != self.warm_up_person]
            if len(events) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with (self.plan.out / "deliveries.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["person", "event", "id", "created_at", "received_at", "lag_ms"])
            lags = []
            for event in sorted(events, key=lambda e: e["received_at"]):
                made = created_at(event)
                lag = None if made is None else 1000 * (event["received_at"] - made)
                if lag is not None:
                    lags.append(lag)
                writer.writerow([event["person"], event["name"], event["id"], made,
                                 event["received_at"], None if lag is None else round(lag, 1)])
        return {"expected": expected, "delivered": len(events), "latency_ms": percentiles(lags)}

    def _wait_for_empty_queue(self) -> None:
        from ..status import queue_status

        deadline = time.monotonic() + self.plan.drain_timeout
        while queue_status().get("messages", 0) and time.monotonic() < deadline:
            time.sleep(0.5)

    def _cleanup(self, persons: int) -> dict[str, Any]:
        from ..operations import Delete
        from ..producer import batch, enqueue

        ids = [f"{self.plan.prefix}{n:05d}" for n in range(persons)]
        ids.append(self.warm_up_person)
        with batch():
            for person in ids:
                enqueue(Delete(person))
        self.say(f"Cleanup: {len(ids)} person(s) queued for deletion (django_cio.delete)")
        if self.fake is None:
            self._wait_for_empty_queue()
            return {"deleted": len(ids), "left": None}
        deadline = time.monotonic() + self.plan.drain_timeout
        while (left := self.fake.people(self.plan.prefix)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return {"deleted": len(ids), "left": left}
