"""Secrets and PII stay out of everything people read: logs, exceptions, dead letters,
command output and admin pages.

The whole flow runs, failures included, with the root logger and every library's loggers at
DEBUG: identifies and events through a broker outage (Outbox, relay), a 503 retried, a 429, a
207 refusal and a 400 (dead letters), a retry parked in the Outbox, v1 requests (anonymous
events, an identify too big for v2), a request through the middleware, a login, a backfill
with a refused row and a row that cannot be sent, ``cio_status``, ``cio_replay --dry-run``
and the admin. The API key, the Authorization header and every attribute value are made
distinctive (``sk-LEAK-...``, ``leak-<uuid>@example.com``, ``PII-<uuid>``) and looked for in
everything that was captured. Person ids are looked for in logs and exception messages (the
design: logs carry a hash of the person id); the admin and dead letters show them by design.
"""

import base64
import contextlib
import io
import json
import logging
import math
import re
import threading
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import setup_logging
from django.contrib.auth.models import User
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client

import django_cio
from django_cio import backfill
from django_cio.broker.messages import Message
from django_cio.client import TrackClient
from django_cio.conf import get_settings
from django_cio.delivery.engine import deliver_messages
from django_cio.exceptions import CustomerIOError
from django_cio.fakeserver import FakeTrackAPI
from django_cio.models import BackfillRun, DeadLetter, Outbox
from django_cio.operations import Event, Identify, Person
from django_cio.registry import registry
from django_cio.signals import pre_send
from tests.celery_app import BROKERS, app
from tests.conftest import free_port, purge_queue, use_broker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RUN = uuid.uuid4().hex
SITE_ID = f"site-{RUN[:12]}"
API_KEY = f"sk-LEAK-{RUN}"
# What the Authorization header carries: "Basic " + base64("site_id:api_key").
AUTHORIZATION = base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode()
CREDENTIALS = {"API key": API_KEY, "Authorization header": AUTHORIZATION,
               "Authorization header (url-safe)": base64.urlsafe_b64encode(
                   f"{SITE_ID}:{API_KEY}".encode()).decode()}
BAD = "bad"  # the user whose row cannot become an identify (see ``users``)
LIBRARIES = ("django_cio", "celery", "kombu", "amqp", "redis", "urllib3", "requests", "django",
             "py.warnings")
# What every LogRecord has; anything else is an extra a JSON formatter would print.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Secrets:
    """Distinctive values, each remembered, to be looked for afterwards."""

    def __init__(self) -> None:
        self.values: dict[str, str] = dict(CREDENTIALS)  # never anywhere
        self.people: dict[str, str] = {}  # person ids: not in logs nor exception messages

    def email(self) -> str:
        value = f"leak-{uuid.uuid4().hex}@example.com"
        self.values[f"email {len(self.values)}"] = value
        return value

    def value(self) -> str:
        value = f"PII-{uuid.uuid4().hex}"
        self.values[f"value {len(self.values)}"] = value
        return value

    def person(self) -> str:
        value = f"pid-{uuid.uuid4().hex}"
        self.people[f"person {len(self.people)}"] = value
        return value

    def attributes(self) -> dict[str, Any]:
        return {"email": self.email(), "first_name": self.value(),
                "address": {"street": self.value(), "tags": [self.value()]}}


class Captured:
    """Every text a person could read, by where it was seen."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def exception(self, where: str, exc: BaseException) -> None:
        """Its message, its repr and its traceback, following the chain Python would print."""
        self.add(where, "".join(traceback.format_exception(exc)))
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            self.add(where, f"{exc} {exc!r} {getattr(exc, 'args', '')!r}")
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)

    def leaks(self, secrets: dict[str, str], only: tuple[str, ...] = ()) -> list[str]:
        found = []
        for where, text in self.texts:
            if only and not where.startswith(only):
                continue
            for name, secret in secrets.items():
                if secret in text:
                    line = next(line for line in text.splitlines() if secret in line)
                    found.append(f"{name} in {where}: {line.strip()[:300]}")
        return found


class LogCapture(logging.Handler):
    """Each record as a formatter would write it (message, traceback, stack) plus its extras."""

    def __init__(self, captured: Captured) -> None:
        super().__init__(logging.DEBUG)
        self.captured = captured
        self.threads: set[str] = set()
        self.setFormatter(logging.Formatter(
            "%(levelname)s %(name)s [%(threadName)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        extras = {key: value for key, value in vars(record).items() if key not in _STANDARD}
        if extras:
            text += f" extras={extras!r}"
        with self.lock:
            self.threads.add(record.threadName)
            self.captured.add(f"log {record.name}", text)


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
def debug_logs(captured: Captured) -> Iterator[LogCapture]:
    """Every logger of the libraries at DEBUG, into a handler on the root logger (records from
    every thread: the worker's too). Celery is kept from reconfiguring logging when a worker
    starts (it would drop the root logger's handlers)."""
    handler = LogCapture(captured)

    def leave_logging_alone(**kwargs: Any) -> None:
        pass

    setup_logging.connect(leave_logging_alone, weak=False)
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in LIBRARIES)]
    loggers += [logger for name, logger in list(logging.Logger.manager.loggerDict.items())
                if isinstance(logger, logging.Logger) and name.split(".")[0] in LIBRARIES]
    saved = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    # Loggers that don't propagate (Celery's task loggers) get the handler themselves.
    private = [logger for logger in loggers if not logger.propagate]
    root.addHandler(handler)
    for logger in private:
        logger.addHandler(handler)
    yield handler
    for logger in private:
        logger.removeHandler(handler)
    root.removeHandler(handler)
    for logger, level, disabled in saved:
        logger.setLevel(level)
        logger.disabled = disabled
    setup_logging.disconnect(leave_logging_alone)


@pytest.fixture
def fake() -> Iterator[FakeTrackAPI]:
    """The fake Track API, with credentials easy to find wherever they leak (replaces
    conftest's ``fake``: ``cio_fake`` points the settings at this one)."""
    with FakeTrackAPI(site_id=SITE_ID, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


@pytest.fixture
def users(cio_fake: FakeTrackAPI, secrets: Secrets) -> Iterator[None]:
    """User registered with django-cio; the row of user ``BAD`` breaks a limit."""
    too_long = secrets.value() * 40  # over the 1000-byte value limit, PII all along

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["email", "first_name", "last_name"]

        def get_attributes(self, user: User) -> dict[str, Any]:
            attributes = super().get_attributes(user)
            if user.username == BAD:
                attributes["notes"] = too_long
            return attributes

    yield
    registry.unregister(User)


@contextlib.contextmanager
def running_worker() -> Iterator[Any]:
    """A Celery worker thread on the delivery queue, logging at DEBUG."""
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False,
                      queues=[get_settings().queue], loglevel="DEBUG",
                      shutdown_timeout=30) as worker:
        yield worker
    purge_queue()


def command(captured: Captured, *args: str) -> str:
    """Run a management command; its stdout, stderr and any error are captured."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        captured.exception(f"exception {args[0]}", exc)
    captured.add(f"output {' '.join(args)}", out.getvalue() + err.getvalue())
    return out.getvalue()


def statuses(fake: FakeTrackAPI) -> list[int]:
    return [request["status"] for request in fake.store.requests]


def assert_nothing_leaked(captured: Captured, secrets: Secrets) -> None:
    leaks = captured.leaks(secrets.values)
    leaks += captured.leaks(secrets.people, only=("log", "exception"))
    assert not leaks, "secrets or PII leaked:\n" + "\n".join(leaks)


# -- the flow -------------------------------------------------------------------------------

def test_the_whole_flow_with_failures_leaks_no_secret_and_no_value(
    settings, cio_fake, debug_logs, captured, secrets, users, wait_for, capfd, request
):
    fake = cio_fake
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "AUTH_SIGNALS": True, "PAGE_VIEWS": True,
                           "RETRY_AFTER_MAX": 600}
    # Not a PII first name: the admin greets its user by it, on every page.
    admin = User.objects.create_superuser("root", email=secrets.email(), password="x",
                                          first_name="Root", last_name=secrets.value())

    # The broker is down: the ops wait in the Outbox, the caller sees nothing.
    request.addfinalizer(lambda: use_broker(BROKERS["redis"]))
    use_broker(f"redis://127.0.0.1:{free_port()}/0")
    outage = secrets.person()
    with transaction.atomic():
        django_cio.identify(outage, **secrets.attributes())
        django_cio.track(outage, "signed_up", coupon=secrets.value(), email=secrets.email())
    assert Outbox.objects.count() == 1
    use_broker(BROKERS["redis"])
    purge_queue()

    with running_worker():
        assert "Published 1" in command(captured, "cio_relay")
        wait_for(lambda: outage in fake.store.people and fake.store.events)

        # 503, then delivered by the retry.
        fake.fail_next(503)
        retried = secrets.person()
        with transaction.atomic():
            django_cio.identify(retried, **secrets.attributes())
            django_cio.track(retried, "ordered", total=12, note=secrets.value())
        wait_for(lambda: retried in fake.store.people, timeout=30)

        # 429 with a Retry-After, then delivered.
        fake.configure(retry_after=1)
        fake.fail_next(429)
        limited = secrets.person()
        django_cio.identify(limited, **secrets.attributes())
        wait_for(lambda: limited in fake.store.people)

        # A 207: the refused person's ops become dead letters, the others go through.
        refused, accepted = secrets.person(), secrets.person()
        fake.configure(refuse=[refused])
        with transaction.atomic():
            django_cio.identify(refused, **secrets.attributes())
            django_cio.track(refused, "upgraded", card=secrets.value())
            django_cio.identify(accepted, **secrets.attributes())
        wait_for(lambda: DeadLetter.objects.filter(status=207).count() == 2)
        assert accepted in fake.store.people

        # A 400: the whole request's ops become dead letters.
        fake.configure(refuse=[])
        fake.fail_next(400)
        rejected = secrets.person()
        with transaction.atomic():
            django_cio.identify(rejected, **secrets.attributes())
            django_cio.track(rejected, "cancelled", reason=secrets.value())
        wait_for(lambda: DeadLetter.objects.filter(status=400).count() == 2)

        # v1 requests: an anonymous event, and an identify too big for a v2 batch (its path
        # holds the person id).
        big = secrets.person()
        django_cio.track_anonymous(uuid.uuid4().hex, "browsed", query=secrets.value())
        django_cio.identify(big, **{f"field_{n}": secrets.value() * 25 for n in range(40)})
        wait_for(lambda: big in fake.store.people)

        # A request through the middleware (a page view, its query string left out) and a
        # login (identify and login event, by the auth signals).
        browser = Client()
        browser.get("/pricing/", {"email": secrets.email()})
        browser.force_login(admin)
        browser.get("/pricing/", {"email": secrets.email()})
        wait_for(lambda: any(event["type"] == "page" and event["person"] == str(admin.pk)
                             for event in fake.store.events))
        assert any(event["name"] == "login" for event in fake.store.events)

        # A long Retry-After: the retry is parked in the Outbox.
        fake.configure(retry_after=300)
        fake.fail_next(429)
        parked = secrets.person()
        django_cio.identify(parked, **secrets.attributes())
        wait_for(Outbox.objects.exists)
        assert 503 in statuses(fake) and 429 in statuses(fake)

        # A backfill: one row refused (207), one that cannot become an identify.
        rows = [User(username=f"user{n}", email=secrets.email(), first_name=secrets.value(),
                     last_name=secrets.value()) for n in range(6)]
        rows.append(User(username=BAD, email=secrets.email()))
        User.objects.bulk_create(rows)
        refused_row = str(User.objects.get(username="user3").pk)
        fake.configure(refuse=[refused_row])
        command(captured, "cio_backfill", "auth.User", "--dry-run")
        command(captured, "cio_backfill", "auth.User", "--batch-size", "3")
        run = BackfillRun.objects.get()
        assert (run.status, run.failed) == ("done", 2)
        assert DeadLetter.objects.filter(person_id=refused_row).exists()

        # What operators look at.
        command(captured, "cio_status")
        command(captured, "check")
        status = json.loads(command(captured, "cio_status", "--json"))
        assert status["workspaces"]["default"]["dead_letters"]["total"]
        assert "Would replay" in command(captured, "cio_replay", "--all", "--dry-run")
        staff = Client()
        staff.force_login(admin)
        pages = ["/admin/django_cio/deadletter/", "/admin/django_cio/outbox/",
                 "/admin/django_cio/backfillrun/"]
        letters = list(DeadLetter.objects.values_list("pk", flat=True))
        outbox = list(Outbox.objects.values_list("pk", flat=True))
        pages += [f"/admin/django_cio/deadletter/{pk}/change/" for pk in letters]
        pages += [f"/admin/django_cio/outbox/{pk}/change/" for pk in outbox]
        pages += [f"/admin/django_cio/backfillrun/{run.pk}/change/",
                  f"/admin/django_cio/deadletter/{letters[0]}/history/",
                  f"/admin/django_cio/outbox/{outbox[0]}/history/"]
        for page in pages:
            response = staff.get(page)
            assert response.status_code == 200, page
            captured.add(f"admin {page}", response.content.decode())
        for model, pks in (("deadletter", letters), ("outbox", outbox)):  # "are you sure?"
            response = staff.post(f"/admin/django_cio/{model}/", {
                "action": "delete_selected", "_selected_action": pks})
            assert response.status_code == 200
            captured.add(f"admin delete {model}", response.content.decode())

        # The admin shows dead letters redacted (keys, types), yet replays them as they were.
        letter = DeadLetter.objects.get(person_id=rejected, kind="identify")
        shown = staff.get(f"/admin/django_cio/deadletter/{letter.pk}/change/").content.decode()
        assert '&quot;email&quot;: &quot;str&quot;' in shown
        response = staff.post("/admin/django_cio/deadletter/", {
            "action": "replay", "_selected_action": [letter.pk]}, follow=True)
        captured.add("admin replay", response.content.decode())
        wait_for(lambda: rejected in fake.store.people)
        assert fake.store.people[rejected]["email"] == letter.op["attributes"]["email"]

    for reason in DeadLetter.objects.values_list("reason", flat=True):
        captured.add("dead letter reason", reason)
    out, err = capfd.readouterr()
    captured.add("stdout/stderr", out + err)

    # The capture saw the worker thread's records, and ran at DEBUG.
    assert any(thread != threading.main_thread().name for thread in debug_logs.threads)
    assert any(where == "log django_cio.requests" and "INFO" in text and "HTTP 503" in text
               for where, text in captured.texts)
    assert any(where.startswith("log urllib3") for where, _ in captured.texts)
    assert_nothing_leaked(captured, secrets)


# -- one by one -----------------------------------------------------------------------------

def test_validation_errors_at_call_time_name_the_field_not_the_value(
    cio_fake, debug_logs, captured, secrets
):
    person = secrets.person()
    long_value = secrets.value() * 40
    calls = [
        lambda: django_cio.identify(person, email=long_value),
        lambda: django_cio.identify(person, **{secrets.email(): "x" * 1001}),  # data as key
        lambda: django_cio.identify(person, email=secrets.email() + "\x00"),
        lambda: django_cio.identify(person, nested={"deep": [secrets.value(), object()]}),
        lambda: django_cio.identify(person, score=math.nan, email=secrets.email()),
        lambda: django_cio.identify(person, big=10**30, email=secrets.email()),
        lambda: django_cio.identify(secrets.value() * 10),  # a person id over 150 bytes
        lambda: django_cio.track(person, "x", payload=secrets.value() * 5000),
        lambda: django_cio.track(person, secrets.value() * 10, email=secrets.email()),
        lambda: django_cio.track(person, "x", when=secrets.value().encode()),
        lambda: django_cio.add_device(person, secrets.value(), "windows"),
        lambda: django_cio.add_device(person, "token", "ios", model=[secrets.value()]),
        lambda: django_cio.merge(person, person),
        lambda: Event(person, "x", {}, id=secrets.value()),
        lambda: Identify(person, attributes=[("email", secrets.email())]),
    ]
    for number, call in enumerate(calls):
        with pytest.raises(CustomerIOError) as raised:
            call()
        captured.exception(f"exception call {number}", raised.value)
    assert_nothing_leaked(captured, secrets)


def test_client_errors_carry_status_and_kind_only(cio_fake, debug_logs, captured, secrets):
    person = secrets.person()
    client = TrackClient(SITE_ID, API_KEY, url=cio_fake.url, timeout=0.5)
    captured.add("repr client", repr(client))
    ops = [Identify(person, secrets.attributes()), Event(person, "x", {"a": secrets.value()})]
    for status in (400, 401, 403, 404, 413, 429, 500, 503):
        cio_fake.fail_next(status)
        with pytest.raises(CustomerIOError) as raised:
            client.send_batch(ops)
        captured.exception(f"exception HTTP {status}", raised.value)
        cio_fake.fail_next(status)
        with pytest.raises(CustomerIOError) as raised:
            client.identify(person, **secrets.attributes())  # v1: the id is in the path
        captured.exception(f"exception v1 HTTP {status}", raised.value)
    cio_fake.configure(latency_ms=1500)  # a timeout
    with pytest.raises(CustomerIOError) as raised:
        client.identify(person, email=secrets.email())
    captured.exception("exception timeout", raised.value)
    cio_fake.configure(latency_ms=0)
    wrong = TrackClient(SITE_ID, secrets.value(), url=cio_fake.url)  # a 401
    with pytest.raises(CustomerIOError) as raised:
        wrong.identify(person, email=secrets.email())
    captured.exception("exception wrong key", raised.value)
    with pytest.raises(Exception) as raised:  # a key pasted with its quotes
        TrackClient(SITE_ID, f"\u201c{API_KEY}\u201d", url=cio_fake.url).identify(person)
    captured.exception("exception key not ASCII", raised.value)
    nowhere = TrackClient(SITE_ID, API_KEY, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CustomerIOError) as raised:
        nowhere.identify(person, email=secrets.email())  # connection refused
    captured.exception("exception refused", raised.value)
    for track in (client, wrong, nowhere):
        track.close()
    assert_nothing_leaked(captured, secrets)


def test_a_crash_in_delivery_is_logged_without_its_message(
    cio_fake, debug_logs, captured, secrets, published
):
    """Code around delivery (a pre_send receiver, the database) may raise with values in the
    message; at DEBUG too, the log carries only the exception's type."""
    email = secrets.email()

    def crash(sender: Any, ops: Any, **kwargs: Any) -> None:
        raise ValueError(f"cannot handle {email}")

    pre_send.connect(crash, weak=False)
    try:  # as the deliver task calls it (Celery's own logging of the task is the flow's)
        deliver_messages([Message([Identify(secrets.person(), {"email": email}).to_dict()])])
    finally:
        pre_send.disconnect(crash)
    assert len(published) == 1  # retried later
    assert any("delivery crashed (ValueError)" in text for _, text in captured.texts)
    assert_nothing_leaked(captured, secrets)


def test_a_save_or_login_that_fails_validation_is_logged_without_the_value(
    settings, debug_logs, captured, secrets, cio_fake, users, published
):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "AUTH_SIGNALS": True}
    user = User.objects.create(username=BAD, email=secrets.email())  # logged, saved
    Client().force_login(user)  # the identify breaks a limit: logged, the login goes on
    logged = "\n".join(text for _, text in captured.texts)
    assert "customerio: auth.User identify (UserCustomer) not sent (identify: attributes.notes" \
        in logged
    assert "customerio: login not sent (identify: attributes.notes" in logged
    assert_nothing_leaked(captured, secrets)


def test_backfill_logs_the_pk_of_a_row_it_cannot_send_not_its_values(
    cio_fake, debug_logs, captured, secrets, users
):
    User.objects.create(username=BAD, email=secrets.email())
    run = backfill.start("auth.User", {})
    backfill.Backfill(run).execute()
    logged = "\n".join(text for _, text in captured.texts)
    assert re.search(r"backfill auth.User row pk=\d+ not sent", logged)
    assert_nothing_leaked(captured, secrets)


def test_transactional_messages_leak_no_key_address_body_or_data(
    settings, debug_logs, captured, secrets, admin_client, published
):
    """Emails, an SMS and a push through the email backend and the verbs, each delivered
    in this process with one App API failure kind: the App API key, addresses,
    subjects, bodies, attachments and message data appear in no log, exception, dead-letter
    reason, command output or admin page."""
    app_key = f"sk-LEAK-APP-{RUN}"
    secrets.values.update({"App API key": app_key, "Bearer header": f"Bearer {app_key}"})

    def email() -> None:
        message = EmailMessage(secrets.value(), secrets.value(), secrets.email(),
                               [secrets.email()], cc=[secrets.email()])
        message.attach(f"{secrets.value()}.txt", secrets.value())
        message.merge_global_data = {"token": secrets.value()}
        message.send()

    def sms() -> None:
        django_cio.send_sms(secrets.person(), "code", message_data={"c": secrets.value()},
                            to="+33612345678")

    def push() -> None:
        django_cio.send_push(Person(email=secrets.email()), 7, title=secrets.value(),
                             to="last_used")

    with FakeTrackAPI(site_id=SITE_ID, api_key=API_KEY, app_api_key=app_key) as fake:
        settings.CUSTOMERIO = {**settings.CUSTOMERIO, "APP_URL": fake.url,
                               "APP_API_KEY": app_key, "TIMEOUT": 0.5}
        settings.EMAIL_BACKEND = "django_cio.mail.EmailBackend"
        for status, send in ((None, email), (503, email), (500, email), (400, sms),
                             (401, email), (504, push), ("timeout", sms), (None, push)):
            fake.configure(latency_ms=1500 if status == "timeout" else 0)
            if isinstance(status, int):
                fake.fail_next(status)
            send()
            # As the deliver task calls it (Celery's own logging of a task, which carries the
            # redacted argsrepr django-cio publishes, is the whole flow's).
            deliver_messages([Message(published[-1])])
        for call in (lambda: django_cio.send_sms(secrets.person(), "code", to=secrets.value()),
                     lambda: django_cio.send_email(secrets.person(), to=",".join(
                         secrets.email() for _ in range(16)))):
            with pytest.raises(CustomerIOError) as raised:
                call()
            captured.exception("exception message call", raised.value)
        assert len(fake.store.messages) >= 2  # the first and the last, at least
        assert DeadLetter.objects.filter(reason__startswith="may have been sent").count() == 3
        for reason in DeadLetter.objects.values_list("reason", flat=True):
            captured.add("dead letter reason", reason)
        command(captured, "cio_status")
        for page in ("deadletter", "sentmessage", "outbox"):
            captured.add(f"admin {page}", admin_client.get(
                f"/admin/django_cio/{page}/").content.decode())
        for letter in DeadLetter.objects.all():
            captured.add("admin letter", admin_client.get(
                f"/admin/django_cio/deadletter/{letter.pk}/change/").content.decode())
    assert_nothing_leaked(captured, secrets)
