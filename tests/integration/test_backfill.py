"""cio_backfill on PostgreSQL against the fake Track API."""

import io
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

import django_cio
from bench.common import busiest_second
from django_cio import backfill
from django_cio.broker.publish import BACKFILL_PAGE, publish_task
from django_cio.models import BackfillRun, DeadLetter
from django_cio.registry import registry
from tests.conftest import ROOT, _test_database_url
from tests.models import Company, Employee, Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def users(cio_fake):
    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["email", "is_active"]

    User.objects.bulk_create(
        User(username=f"u{n:05}", email=f"u{n}@example.com", is_active=n % 10 != 0)
        for n in range(20_000)
    )
    yield cio_fake
    registry.unregister(User)


def test_every_row_is_sent_in_pages_of_one_request_each(users, capsys):
    call_command("cio_backfill", "auth.User", "--batch-size", "1000", "--quiet")
    stats = users.store.stats()
    assert stats["people"] == 20_000 and stats["requests"] == 20
    run = BackfillRun.objects.get()
    assert (run.status, run.total, run.sent, run.failed) == ("done", 20_000, 20_000, 0)
    assert "20,000 sent" in capsys.readouterr().out


def test_where_filters_rows(users):
    call_command("cio_backfill", "auth.User", "--where", "is_active=False", "--quiet")
    assert users.store.stats()["people"] == 2_000
    assert all(person["is_active"] is False for person in users.store.people.values())


def test_a_stopped_run_resumes_where_it_stopped_and_sends_nothing_twice(users):
    run = backfill.start("auth.User", {}, batch_size=5_000)
    job = backfill.Backfill(run)
    job.stop.set()  # as Ctrl-C would: stop after the current page
    assert job.execute().status == "stopped" and run.last_pk is not None
    assert users.store.stats()["people"] == 5_000
    call_command("cio_backfill", "--resume", str(run.pk), "--quiet")
    run.refresh_from_db()
    assert (run.status, run.sent) == ("done", 20_000)
    assert users.store.stats()["ops"] == {"identify": 20_000}  # not one row sent twice


def test_sigint_stops_after_the_batch_and_prints_the_resume_command(users):
    users.configure(latency_ms=300)  # slow enough to interrupt mid-run
    env = {**os.environ, "DATABASE_URL": _test_database_url(),
           "CUSTOMERIO_TRACK_URL": users.url, "CUSTOMERIO_SITE_ID": users.site_id,
           "CUSTOMERIO_API_KEY": users.api_key}
    command = [sys.executable, "-c", (
        "import django, sys; django.setup(); import django_cio; "
        "from django.contrib.auth.models import User; "
        "django_cio.register(User)(type('C', (django_cio.Customer,), {'fields': ['email']})); "
        "from django.core.management import execute_from_command_line as run; "
        "run(['manage.py', 'cio_backfill', 'auth.User', '--batch-size', '1000'])")]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while users.received < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    run = BackfillRun.objects.get()
    assert run.status == "stopped" and f"--resume {run.pk}" in err
    assert 0 < run.sent < 20_000 and run.sent == users.store.stats()["people"]


def test_rate_share_takes_at_most_that_share_of_the_limit(users, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "RATE_LIMIT": "40/s"}
    User.objects.filter(pk__gt=User.objects.order_by("pk")[400].pk).delete()
    call_command("cio_backfill", "auth.User", "--batch-size", "10", "--rate-share", "0.5",
                 "--quiet")
    times = sorted(request["at"] for request in users.store.requests)
    assert len(times) == 41
    assert busiest_second(times) <= 21  # half of 40/s, give or take the one request in flight


def test_dry_run_counts_and_hides_values(users, capsys):
    call_command("cio_backfill", "auth.User", "--dry-run")
    out = capsys.readouterr().out
    assert "20,000 row(s) of auth.User would be sent" in out
    assert "@example.com" not in out and "<Identify" in out
    assert users.store.stats()["requests"] == 0 and not BackfillRun.objects.exists()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_dry_run_shows_person_ids_only_on_a_terminal(users):
    first = str(User.objects.order_by("pk")[0].pk)
    for stdout, shown in ((io.StringIO(), False), (Terminal(), True)):
        call_command("cio_backfill", "auth.User", "--dry-run", stdout=stdout)
        assert (f"person={first} " in stdout.getvalue()) is shown
        assert "@example.com" not in stdout.getvalue()


def test_refused_rows_are_dead_letters_and_exit_1(users):
    User.objects.filter(pk__gt=User.objects.order_by("pk")[99].pk).delete()
    refused = str(User.objects.order_by("pk")[5].pk)
    users.configure(refuse=[refused])
    with pytest.raises(CommandError, match="1 row") as caught:
        call_command("cio_backfill", "auth.User", "--quiet")
    assert caught.value.returncode == 1
    assert list(DeadLetter.objects.values_list("person_id", flat=True)) == [refused]
    assert BackfillRun.objects.get().failed == 1


@pytest.mark.parametrize("args", [
    ["nope.Model"], ["auth.Group"], ["auth.User", "--where", "x"],
    ["auth.User", "--where", "colour=red"], ["auth.User", "--where", "is_active=yes"],
    ["auth.User", "--where", "date_joined__gte=notadate"],
    ["auth.User", "--where", "email__regex=("], [],
])
def test_usage_errors_exit_2(users, args):
    with pytest.raises(CommandError) as caught:
        call_command("cio_backfill", *args, "--quiet")
    assert caught.value.returncode == 2


def test_an_event_model_without_a_timestamp_is_told_what_a_backfill_needs(users):
    with pytest.raises(CommandError, match="registered with register_event without a "
                                           "timestamp") as caught:
        call_command("cio_backfill", "tests.Order", "--quiet")
    assert caught.value.returncode == 2


def test_past_orders_go_with_their_own_time_and_ids_and_a_rerun_repeats_none(
        cio_fake, registrations):
    django_cio.register_event(Order, name="ordered", person="user_id", data=["total"],
                              timestamp="placed_at")
    ada = User.objects.create(username="ada")
    placed = [datetime(2020, 1, day, tzinfo=timezone.utc) for day in (1, 2, 3)]
    Order.objects.bulk_create(Order(user=ada, total=day, placed_at=when)
                              for day, when in enumerate(placed, 1))
    call_command("cio_backfill", "tests.Order", "--quiet")
    call_command("cio_backfill", "tests.Order", "--quiet")  # again: same ids, dropped
    events = cio_fake.store.events
    assert [(e["person"], e["timestamp"], e["data"]) for e in events] == [
        (str(ada.pk), int(when.timestamp()), {"total": day}) for day, when in enumerate(placed, 1)]
    assert cio_fake.store.duplicate_event_ids == 3
    live = Order.objects.create(user=ada, total=4)
    call_command("cio_backfill", "tests.Order", "--where", f"pk={live.pk}", "--quiet")
    (ordered,) = [e for e in registry.events_for(Order) if e.name == "ordered"]  # live: same id
    assert ordered.op(live).id == events[-1]["id"] and ordered.op(live).data == {"total": 4}


def test_companies_and_their_people_s_relationships_are_backfilled(cio_fake, companies):
    acme = Company.objects.create(name="Acme")
    Employee.objects.bulk_create(Employee(email=f"e{n}@example.com", company=acme)
                                 for n in range(3))
    cio_fake.store.reset()
    call_command("cio_backfill", "tests.Company", "--quiet")
    call_command("cio_backfill", "tests.Employee", "--quiet")
    assert cio_fake.store.objects == {("1", str(acme.pk)): {"name": "Acme", "plan": "free"}}
    assert len(cio_fake.store.relationships) == 3
    run = BackfillRun.objects.filter(model="tests.Employee").get()
    assert (run.total, run.sent, run.skipped, run.failed) == (3, 3, 0, 0)  # a row, not an op


def test_since_filters_on_date_joined(users):
    call_command("cio_backfill", "auth.User", "--since", "2999-01-01", "--quiet")
    assert users.store.stats()["people"] == 0
    call_command("cio_backfill", "auth.User", "--since", "2000-01-01T00:00:00Z", "--quiet")
    assert users.store.stats()["people"] == 20_000


def test_ids_from_a_file(users, tmp_path):
    wanted = [str(pk) for pk in User.objects.order_by("pk").values_list("pk", flat=True)[:7]]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(wanted) + "\n\n")
    call_command("cio_backfill", "auth.User", "--ids-from", str(ids), "--quiet")
    assert sorted(users.store.people) == sorted(wanted)


def test_all_registered_models(users, capsys):
    call_command("cio_backfill", "--all", "--dry-run")
    assert "of auth.User would be sent" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["auth.User", "--since", "last tuesday"],
                                  ["auth.User", "--ids-from", "/nonexistent/ids.txt"]])
def test_bad_since_or_ids_file_exit_2(users, args):
    with pytest.raises(CommandError) as caught:
        call_command("cio_backfill", *args, "--quiet")
    assert caught.value.returncode == 2


def test_a_row_that_cannot_be_an_identify_is_counted_failed_and_the_rest_go(users, caplog):
    User.objects.filter(pk__gt=User.objects.order_by("pk")[9].pk).delete()
    bad = User.objects.order_by("pk")[3]
    registry.unregister(User)

    @django_cio.register(User)
    class LongBio(django_cio.Customer):
        def get_attributes(self, user):
            return {"bio": "secret " * (200 if user.pk == bad.pk else 1)}  # over 1,000 bytes

    with pytest.raises(CommandError) as caught:
        call_command("cio_backfill", "auth.User", "--quiet")
    assert caught.value.returncode == 1
    assert users.store.stats()["people"] == 9 and BackfillRun.objects.get().failed == 1
    assert f"auth.User row pk={bad.pk} not sent (identify: attributes.bio" in caplog.text
    assert "secret secret" not in caplog.text


def test_transient_errors_are_waited_out_before_the_checkpoint_moves(users):
    User.objects.filter(pk__gt=User.objects.order_by("pk")[299].pk).delete()
    users.fail_next(503, 503, 429)
    users.configure(retry_after=1)
    call_command("cio_backfill", "auth.User", "--batch-size", "100", "--quiet")
    run = BackfillRun.objects.get()
    assert (run.status, run.sent, run.failed) == ("done", 300, 0)
    assert users.store.stats()["people"] == 300
    assert [r["status"] for r in users.store.requests][:4] == [503, 503, 429, 200]


def test_concurrent_senders_deliver_everything_and_checkpoint_in_order(users):
    users.configure(latency_ms=100)
    call_command("cio_backfill", "auth.User", "--concurrency", "4", "--quiet")
    run = BackfillRun.objects.get()
    assert (run.status, run.sent) == ("done", 20_000)
    assert run.last_pk == User.objects.order_by("-pk").values_list("pk", flat=True)[0]
    assert users.store.stats()["ops"] == {"identify": 20_000}


def test_a_stop_with_pages_in_flight_checkpoints_only_what_is_acknowledged(users):
    users.configure(latency_ms=50)
    run = backfill.start("auth.User", {}, batch_size=1000)
    job = backfill.Backfill(run)
    job.execute(progress=lambda rows: job.stop.set(), concurrency=4)
    assert run.status == "stopped"
    covered = set(map(str, User.objects.filter(pk__lte=run.last_pk).values_list("pk", flat=True)))
    assert covered <= set(users.store.people)  # nothing at or below the checkpoint is missing
    assert run.sent == len(covered)


def test_ids_from_a_large_file_pages_through_it_in_order_and_resumes(users, tmp_path):
    pks = list(User.objects.order_by("-pk").values_list("pk", flat=True)[:2_500])
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(map(str, [*pks, 10**9])) + "\n")  # the last is no row
    run = backfill.start("auth.User", {}, batch_size=1_000)
    run.ids_file, run.total = str(ids), backfill.count_ids(User, str(ids))
    run.save()
    job = backfill.Backfill(run)
    job.stop.set()
    job.execute()
    assert (run.ids_done, users.store.stats()["people"]) == (1_000, 1_000)
    assert set(users.store.people) == set(map(str, pks[:1_000]))  # the file's order
    call_command("cio_backfill", "--resume", str(run.pk), "--quiet")
    run.refresh_from_db()
    assert (run.status, run.sent, run.skipped, run.total) == ("done", 2_500, 1, 2_501)
    assert users.store.stats()["ops"] == {"identify": 2_500}


def test_an_ids_file_line_that_is_no_pk_exits_2_naming_the_line(users, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\nnot-a-number\n")
    with pytest.raises(CommandError, match=r"id 3 of .* is not a primary key") as caught:
        call_command("cio_backfill", "auth.User", "--ids-from", str(ids), "--quiet")
    assert caught.value.returncode == 2


def test_resume_leaves_a_live_run_alone_and_takes_over_a_dead_one(users):
    run = backfill.start("auth.User", {}, batch_size=5_000)  # "running", touched just now
    with pytest.raises(CommandError, match="is running") as caught:
        call_command("cio_backfill", "--resume", str(run.pk), "--quiet")
    assert caught.value.returncode == 2
    BackfillRun.objects.filter(pk=run.pk).update(
        updated_at=run.updated_at - timedelta(seconds=backfill.LEASE + 1))  # its process died
    call_command("cio_backfill", "--resume", "--quiet")
    run.refresh_from_db()
    assert (run.status, run.sent, run.options["batch_size"]) == ("done", 20_000, 5_000)
    assert users.store.stats()["ops"] == {"identify": 20_000}


def test_stop_from_elsewhere_stops_a_running_backfill(users, monkeypatch):
    monkeypatch.setattr(backfill.job, "HEARTBEAT", 0.05)
    users.configure(latency_ms=100)
    run = backfill.start("auth.User", {}, batch_size=500)
    job = backfill.Backfill(run)
    stopper = threading.Timer(0.3, call_command, ["cio_backfill", "--stop", str(run.pk)])
    stopper.start()
    job.execute()
    stopper.join()
    run.refresh_from_db()
    assert run.status == "stopped" and 0 < run.sent < 20_000
    with pytest.raises(CommandError, match="no running backfill run") as caught:
        call_command("cio_backfill", "--stop", str(run.pk))
    assert caught.value.returncode == 2


def test_async_sends_every_row_through_the_workers_in_ranges(users, worker, wait_for, capsys):
    call_command("cio_backfill", "auth.User", "--async", "--concurrency", "3",
                 "--batch-size", "2000")
    assert "queued in 3 range(s)" in capsys.readouterr().out
    run = BackfillRun.objects.get()
    wait_for(lambda: BackfillRun.objects.filter(pk=run.pk, status="done").exists(), timeout=60)
    run.refresh_from_db()
    assert (run.sent, run.skipped, run.failed) == (20_000, 0, 0)
    assert all(after == upto for after, upto in run.ranges)
    assert users.store.stats()["people"] == 20_000
    call_command("cio_status")
    assert f"Backfill #{run.pk} of auth.User: done, 20,000/20,000 rows" in capsys.readouterr().out


def test_async_copies_of_a_task_end_as_one_chain_and_a_stopped_run_resumes(users, worker,
                                                                           wait_for):
    users.configure(latency_ms=20)
    run = backfill.start("auth.User", {}, batch_size=1_000)
    run.ranges = backfill.ranges(run, 2)
    run.save()
    for index in (0, 0, 1):  # a redelivered copy of range 0
        publish_task(BACKFILL_PAGE, (run.pk, index))
    wait_for(lambda: BackfillRun.objects.get(pk=run.pk).sent >= 4_000, timeout=60)
    call_command("cio_backfill", "--stop", str(run.pk))
    time.sleep(0.5)  # the pages in flight
    stopped = BackfillRun.objects.get(pk=run.pk)
    assert stopped.status == "stopped" and stopped.sent < 20_000
    BackfillRun.objects.filter(pk=run.pk).update(
        updated_at=stopped.updated_at - timedelta(seconds=backfill.LEASE + 1))
    call_command("cio_backfill", "--resume", str(run.pk))
    wait_for(lambda: BackfillRun.objects.filter(pk=run.pk, status="done").exists(), timeout=60)
    run.refresh_from_db()
    assert run.sent == 20_000  # each page counted once, however many copies sent it
    assert users.store.stats()["people"] == 20_000


def test_an_async_page_cut_short_by_a_long_wait_checkpoints_what_was_acknowledged(
        users, worker, wait_for):
    users.configure(retry_after=6)  # longer than a task waits in a worker
    users.fail_next(0, 429)  # the page's second request
    call_command("cio_backfill", "auth.User", "--async", "--concurrency", "1",
                 "--batch-size", "20000")
    wait_for(lambda: BackfillRun.objects.filter(status="done").exists(), timeout=60)
    run = BackfillRun.objects.get()
    assert (run.sent, run.skipped, run.failed) == (20_000, 0, 0)
    assert users.store.stats()["rate_limited"] == 1
    assert users.store.stats()["ops"] == {"identify": 20_000}  # the first request not again


def test_async_goes_on_from_where_a_stopped_run_in_a_process_left_off(users, worker, wait_for):
    run = backfill.start("auth.User", {}, batch_size=5_000)
    job = backfill.Backfill(run)
    job.stop.set()
    job.execute()
    call_command("cio_backfill", "--resume", str(run.pk), "--async")
    wait_for(lambda: BackfillRun.objects.filter(pk=run.pk, status="done").exists(), timeout=60)
    run.refresh_from_db()
    assert (run.sent, run.total) == (20_000, 20_000)
    assert users.store.stats()["ops"] == {"identify": 20_000}


def test_async_with_no_rows_is_done_at_once(users):
    call_command("cio_backfill", "auth.User", "--async", "--where", "username=nobody")
    assert BackfillRun.objects.get().status == "done"


def test_resume_dry_run_does_not_take_the_run_and_ids_runs_do_not_go_async(users, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    run = backfill.start("auth.User", {}, batch_size=1)
    BackfillRun.objects.filter(pk=run.pk).update(status="stopped", ids_file=str(ids), total=1)
    call_command("cio_backfill", "--resume", str(run.pk), "--dry-run")
    assert BackfillRun.objects.get(pk=run.pk).status == "stopped"
    with pytest.raises(CommandError, match="not with --ids-from") as caught:
        call_command("cio_backfill", "--resume", str(run.pk), "--async")
    assert caught.value.returncode == 2


def test_an_async_page_waits_in_the_worker_for_max_hold_in_all_not_per_429(users):
    users.configure(retry_after=1)
    users.fail_next(*[429] * 10)  # a storm of short waits
    run = backfill.start("auth.User", {}, batch_size=10)
    job = backfill.Backfill(run, patient=False)
    built, _ = job.build(job.rows())
    results, pending, retry = job.deliver([op for _, op in built], max_hold=2)
    assert pending and retry is not None and not results  # given back, not held for 10 s
    assert users.store.stats()["rate_limited"] <= 3
