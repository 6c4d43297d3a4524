"""cio_replay, cio_relay, cio_status and the dead-letter admin, on PostgreSQL and Redis."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError

from django_cio.broker import outbox
from django_cio.models import DeadLetter, Outbox
from django_cio.operations import Event, Identify
from tests.celery_app import BROKERS
from tests.conftest import use_broker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def letters():
    ops = [Event("u1", "signup", {}), Identify("u2", {}), Identify("u3", {})]
    reasons = ["server error", "invalid (identifiers.id)", "server error"]
    return [DeadLetter.objects.create(op=op.to_dict(), kind=op.kind, person_id=op.person_id,
                                      reason=reason, status=503)
            for op, reason in zip(ops, reasons)], ops


def test_replay_needs_to_be_told_which(letters):
    with pytest.raises(CommandError, match="--all"):
        call_command("cio_replay")


def test_replay_dry_run_counts_and_changes_nothing(letters, published, capsys):
    call_command("cio_replay", "--reason", "server", "--dry-run")
    assert "Would replay 2 dead letter(s)" in capsys.readouterr().out
    assert published == [] and DeadLetter.objects.count() == 3


def test_replay_by_reason_requeues_the_ops_as_they_were(letters, published):
    _, ops = letters
    call_command("cio_replay", "--reason", "server")
    assert published == [[ops[0].to_dict(), ops[2].to_dict()]]  # same event id
    assert list(DeadLetter.objects.values_list("person_id", flat=True)) == ["u2"]


def test_replay_by_id_and_all(letters, published):
    rows, _ = letters
    call_command("cio_replay", "--id", str(rows[1].pk))
    assert [op["person_id"] for op in published[0]] == ["u2"]
    call_command("cio_replay", "--all")
    assert not DeadLetter.objects.exists()


def test_replay_while_the_broker_is_down_keeps_the_ops_in_the_outbox(letters, dead_broker):
    call_command("cio_replay", "--all")
    assert not DeadLetter.objects.exists()
    assert [op["person_id"] for op in Outbox.objects.get().ops] == ["u1", "u2", "u3"]


def test_replay_keeps_the_letters_nothing_took(letters, dead_broker, monkeypatch):
    # The broker is down and the Outbox cannot be written either: deleting the letters now
    # would lose the ops for good.
    def outbox_down(*args, **kwargs):
        raise DatabaseError("outbox unavailable")

    monkeypatch.setattr(outbox, "park", outbox_down)
    with pytest.raises(CommandError, match="Replayed 0 of 3"):
        call_command("cio_replay", "--all")
    assert DeadLetter.objects.count() == 3


def test_admin_replay_action(letters, published, admin_client):
    rows, _ = letters
    response = admin_client.post("/admin/django_cio/deadletter/", {
        "action": "replay", "_selected_action": [rows[0].pk],
    }, follow=True)
    assert b"1 operation(s) queued again" in response.content
    assert [op["person_id"] for op in published[0]] == ["u1"]
    assert DeadLetter.objects.count() == 2


def test_admin_lists_and_filters_dead_letters(letters, admin_client):
    response = admin_client.get("/admin/django_cio/deadletter/", {"reason": "server error"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 2


def test_relay_command(published, capsys):
    Outbox.objects.create(ops=[Identify("u1", {}).to_dict()])
    call_command("cio_relay")
    assert "Published 1 outbox message(s)" in capsys.readouterr().out
    assert len(published) == 1 and not Outbox.objects.exists()


def test_status_reports_queue_outbox_and_dead_letters(letters, published, capsys):
    Outbox.objects.create(ops=[Identify("u1", {}).to_dict()])
    call_command("cio_replay", "--id", str(letters[0][1].pk))  # one message on the queue
    capsys.readouterr()
    call_command("cio_status", "--json")
    status = json.loads(capsys.readouterr().out)
    assert list(status["workspaces"]) == ["default"]
    workspace = status["workspaces"]["default"]
    assert workspace["queue"]["messages"] == 1
    assert workspace["outbox"]["messages"] == 1 and workspace["outbox"]["due"] == 1
    assert workspace["dead_letters"] == {"total": 2, "by_reason": {"server error": 2}}
    assert workspace["rate_limiter"]["shared"] is True
    assert (workspace["credentials_refused"], workspace["not_answering"]) == (None, False)
    assert set(status["dedup"]) <= {"hits", "misses"}
    call_command("cio_status")
    out = capsys.readouterr().out
    assert "Dead letters: 2" in out and "Rate limiter: 80/s shared in Redis" in out


def test_status_when_the_broker_is_down(dead_broker, capsys):
    call_command("cio_status")
    assert "unknown (OperationalError)" in capsys.readouterr().out


def test_status_names_the_broker_and_counts_an_empty_redis_queue_as_0(private_redis, capsys):
    use_broker(private_redis.url)  # a Redis that has never held the queue
    try:
        call_command("cio_status")
    finally:
        use_broker(BROKERS["redis"])
    out = capsys.readouterr().out
    assert f"Broker: redis://:**@127.0.0.1:{private_redis.port}/0" in out  # kombu's masking
    assert "0 message(s) waiting, consumers not counted on Redis" in out
