"""``python manage.py demo``: the example shop end to end, then what Customer.io received."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test import Client

from django_cio import dedup
from django_cio.conf import get_settings
from django_cio.fakeserver import FakeTrackAPI

WELCOME = "welcome email"


class Command(BaseCommand):
    help = (
        "Run the example shop end to end: migrate, start the bundled fake Customer.io Track "
        "and App APIs (a US and an EU workspace) and a Celery worker, sign up users (each gets "
        "a welcome email through send_mail()), log them in, place "
        "orders and browse pages, wait for delivery, print what each workspace received, and "
        "stop everything it started. Exit status 0 when every expected op arrived."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=90,
                            help="Seconds to wait for delivery (default 90).")

    def handle(self, *args: Any, timeout: float, **options: Any) -> None:
        call_command("migrate", verbosity=0)
        _purge_queue()
        self.dedup_before = dedup.counters()
        cio = get_settings()
        with FakeTrackAPI(site_id=cio.site_id or "", api_key=cio.api_key or "",
                          app_api_key=cio.app_api_key, latency_ms=20) as fake:
            eu = get_settings("eu")
            fake.add_site(eu.site_id or "", eu.api_key or "", region="eu", latency_ms=20)
            self.stdout.write(f"Fake Customer.io Track and App APIs on {fake.url}, serving a US "
                              "and an EU workspace")
            # Stopped like Ctrl-C, so the worker is stopped too (and not left running).
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            worker = _start_worker(fake.url)
            try:
                expected = self.shop(fake)
                self.wait(fake, expected, timeout)
            finally:
                _stop(worker)
            self.report(fake)

    def shop(self, fake: FakeTrackAPI) -> dict[str, int]:
        """Visitors browse, sign up, log in and buy; return the events that must arrive."""
        run = uuid.uuid4().hex[:6]
        ada = f"ada-{run}@example.com"
        visitor = Client()
        self.stdout.write("A visitor browses the pricing page, signs up (a welcome email "
                          "goes out) and logs in ...")
        visitor.get("/pricing/")
        visitor.post("/signup/", {"email": ada, "first_name": "Ada", "password": "pw-12345"})
        visitor.post("/login/", {"email": ada, "password": "pw-12345"})
        self.stdout.write("... places two orders (Customer.io fails once: 503) and browses.")
        fake.fail_next(503)
        visitor.post("/orders/", {"total": "42.50"})
        visitor.post("/orders/", {"total": "9.99"})
        visitor.get("/")
        for name in ("grace", "linus"):
            Client().post("/signup/", {"email": f"{name}-{run}@example.com",
                                       "first_name": name.title(), "password": "pw-12345"})
        self.stdout.write("Marie, in France, signs up, logs in and orders: her data goes to "
                          "the EU workspace.")
        marie, european = f"marie-{run}@example.fr", Client()
        european.post("/signup/", {"email": marie, "first_name": "Marie", "password": "pw-12345"})
        european.post("/login/", {"email": marie, "password": "pw-12345"})
        european.post("/orders/", {"total": "12.00"})
        self.stdout.write("Ada's row is saved twice more, unchanged: dedup drops what "
                          "Customer.io already has." if dedup.enabled() else
                          "Ada's row is saved twice more, unchanged (identify dedup needs a "
                          "Redis cache: set REDIS_URL to see it drop these).")
        for _ in range(2):
            time.sleep(1.5)  # the previous identify has been delivered (and remembered)
            get_user_model().objects.get(username=ada).save()
        # What must arrive, per workspace (its site id): events, and welcome emails.
        return {get_settings().site_id: {"order_placed": 2, "login": 1, "viewed_pricing": 1,
                                         WELCOME: 4},
                get_settings("eu").site_id: {"order_placed": 1, "login": 1}}

    def wait(self, fake: FakeTrackAPI, expected: dict[str, dict[str, int]],
             timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last, still_since = None, time.monotonic()
        while time.monotonic() < deadline:
            sites = [fake.sites[site_id].store for site_id in expected]
            snapshot = [(store.stats()["requests"], store.stats()["ops_total"]) for store in sites]
            if snapshot != last:
                last, still_since = snapshot, time.monotonic()
            done = all(_names(fake.sites[site_id].store)[name] >= count
                       for site_id, names in expected.items() for name, count in names.items())
            if done and time.monotonic() - still_since > 2:
                return
            time.sleep(0.2)
        arrived = {site_id: dict(_names(site.store)) for site_id, site in fake.sites.items()}
        raise CommandError(f"not everything arrived within {timeout:.0f} s: {arrived}; "
                           f"see {settings.STATE_DIR / 'worker.log'}")

    def report(self, fake: FakeTrackAPI) -> None:
        out = self.stdout.write
        for site in fake.sites.values():
            self.report_site(site.store, f"{site.region.upper()} workspace ({site.site_id})")
        stats = [site.store.stats() for site in fake.sites.values()]
        retries = sum(count for site in stats for status, count in site["statuses"].items()
                      if int(status) >= 500)
        now, before = dedup.counters(), self.dedup_before
        dropped = now.get("hits", 0) - before.get("hits", 0)
        sent = now.get("misses", 0) - before.get("misses", 0)
        out("\nBoth workspaces:")
        out(f"  retries:  {retries} request(s) failed and were retried")
        out(f"  dedup:    {dropped} unchanged identify(s) dropped, {sent} sent" if dedup.enabled()
            else "  dedup:    off (no Redis cache), every identify sent")
        duplicates = sum(site["duplicate_event_ids"] for site in stats)
        out(f"  duplicate event ids: {duplicates}")
        self.stdout.write(self.style.SUCCESS("\nDemo OK."))

    def report_site(self, store: Any, title: str) -> None:
        stats, out = store.stats(), self.stdout.write
        out(f"\nWhat Customer.io's {title} received:")
        out(f"  people:   {stats['people']}")
        for person, attributes in store.people.items():
            out(f"    {person:>4}  {attributes.get('email', '')}")
        events = Counter(event["name"] for event in store.events)
        out(f"  events:   {stats['events']}  "
            f"({', '.join(f'{name} x{count}' for name, count in events.items())})")
        if store.messages:
            out(f"  transactional emails: {len(store.messages)}  (welcome, via send_mail())")
        out(f"  ops:      {stats['ops_total']}  {stats['ops']}")
        out(f"  requests: {stats['requests']}  statuses {stats['statuses']}  "
            f"ops per request {stats['ops_per_request']}")


def _names(store: Any) -> Counter[str]:
    """Events by name, and welcome emails (every signup's, from the default workspace)."""
    names = Counter(event["name"] for event in store.events)
    names[WELCOME] = sum(m["body"].get("subject") == "Welcome to the shop"
                         for m in store.messages)
    return names


def _start_worker(track_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CUSTOMERIO_TRACK_URL": track_url, "CUSTOMERIO_EU_TRACK_URL": track_url,
           "CUSTOMERIO_APP_URL": track_url}
    command = [sys.executable, "-m", "celery", "-A", "example_project", "worker",
               "-Q", ",".join(_queues()), "-c", "2", "-l", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with (settings.STATE_DIR / "worker.log").open("wb") as log:
        # A session of its own: the worker and its pool processes are stopped as one group.
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=env,  # noqa: S603
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _purge_queue() -> None:
    """Drop what an interrupted earlier run left on the broker."""
    from example_project.celery import app

    with contextlib.suppress(Exception), app.connection_for_write() as connection:
        for queue in _queues():
            with contextlib.suppress(Exception):
                connection.default_channel.queue_purge(queue)  # if it exists yet


def _queues() -> list[str]:
    """Every workspace's queue: this worker serves them all."""
    return [get_settings(name).queue for name in get_settings().workspace_names]
