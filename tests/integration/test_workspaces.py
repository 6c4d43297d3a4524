"""Several workspaces on real parts: one fake serving two sites, a real worker, the broker,
PostgreSQL, and the commands an operator runs."""

import json

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

import django_cio
from django_cio.broker.outbox import park
from django_cio.broker.publish import DELIVER, publish_task
from django_cio.broker.relay import relay
from django_cio.conf import get_settings
from django_cio.delivery import retry
from django_cio.models import BackfillRun, DeadLetter, Outbox
from django_cio.operations import Event, Identify

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def eu(settings, cio_fake):
    """A second workspace, "eu", served by the same fake as a site of its own."""
    site = cio_fake.add_site("eu-site", "eu-key-never-shown", region="eu")
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": {"eu": {
        "SITE_ID": site.site_id, "API_KEY": site.api_key, "REGION": "eu",
        "TRACK_URL": cio_fake.url}}}
    return site


def test_each_workspace_gets_its_own_ops_through_its_own_queue(eu, published, worker,
                                                               cio_fake, wait_for):
    with django_cio.batch():  # one request's ops: one message per workspace
        django_cio.identify("us-1", plan="pro")
        django_cio.workspace("eu").identify("eu-1", plan="pro")
        django_cio.workspace("eu").track("eu-1", "upgraded")
    queues = [detail["routing_key"] for detail in published.details]
    assert queues == [get_settings().queue, get_settings("eu").queue]
    wait_for(lambda: cio_fake.store.people and eu.store.events)
    assert list(cio_fake.store.people) == ["us-1"] and not cio_fake.store.events
    assert list(eu.store.people) == ["eu-1"]
    assert [event["name"] for event in eu.store.events] == ["upgraded"]


def test_the_outbox_and_dead_letters_keep_the_workspace(eu, published):
    park([Event("eu-1", "upgraded", {}, workspace="eu").to_dict()])
    assert Outbox.objects.get().workspace == "eu"
    assert relay() == 1
    assert published.details[-1]["routing_key"] == get_settings("eu").queue

    letters = {workspace: Identify(f"{workspace}-1", {}, workspace=workspace).to_dict()
               for workspace in ("default", "eu")}
    for op in letters.values():
        DeadLetter.for_op(op, reason="server error").save()
    assert sorted(DeadLetter.objects.values_list("workspace", flat=True)) == ["default", "eu"]
    call_command("cio_replay", "--workspace", "eu")
    assert list(DeadLetter.objects.values_list("workspace", flat=True)) == ["default"]
    assert published.details[-1]["routing_key"] == get_settings("eu").queue
    assert published[-1] == [letters["eu"]]


def test_status_has_a_section_per_workspace(eu, capsys):
    park([Event("eu-1", "upgraded", {}, workspace="eu").to_dict()])
    call_command("cio_status", "--json")
    status = json.loads(capsys.readouterr().out)
    assert list(status["workspaces"]) == ["default", "eu"]
    assert status["workspaces"]["eu"]["outbox"]["messages"] == 1
    assert status["workspaces"]["default"]["outbox"]["messages"] == 0
    assert status["workspaces"]["eu"]["queue"]["name"] == get_settings("eu").queue
    call_command("cio_status")
    out = capsys.readouterr().out
    assert "Workspace 'eu'" in out and "eu-key-never-shown" not in out


def test_the_region_check_passes_for_good_settings(eu, capsys):
    call_command("cio_status", "--check")
    out = capsys.readouterr().out
    assert "Workspace 'default': credentials accepted, region us, Customer.io workspace 1" in out
    assert "Workspace 'eu': credentials accepted, region eu, Customer.io workspace 2" in out


@pytest.mark.parametrize(("change", "problem"), [
    ({"REGION": "us"}, "its credentials belong to region 'eu', not REGION 'us'"),
    ({"API_KEY": "wrong"}, "Customer.io refuses its credentials (HTTP 401)"),
    ({"SITE_ID": "fake-site-id", "API_KEY": "fake-api-key", "REGION": "us"},
     "the same Customer.io workspace as 'default'"),
])
def test_the_region_check_names_each_problem_and_exits_1(eu, settings, capsys, change,
                                                        problem):
    workspaces = settings.CUSTOMERIO["WORKSPACES"]
    settings.CUSTOMERIO = {**settings.CUSTOMERIO,
                           "WORKSPACES": {"eu": {**workspaces["eu"], **change}}}
    with pytest.raises(CommandError, match="1 workspace") as failed:
        call_command("cio_status", "--check")
    assert failed.value.returncode == 1
    err = capsys.readouterr().err
    assert f"Workspace 'eu': {problem}" in err and "wrong" not in err


def test_the_admin_filters_dead_letters_by_workspace(eu, admin_client: Client):
    for person, workspace in (("us-1", None), ("eu-1", "eu")):
        op = Identify(person, {}, workspace=workspace).to_dict()
        DeadLetter.for_op(op, reason="server error").save()
    page = admin_client.get("/admin/django_cio/deadletter/?workspace=eu")
    assert page.status_code == 200 and b"eu-1" in page.content and b"us-1" not in page.content
    assert admin_client.get("/admin/django_cio/outbox/?workspace=eu").status_code == 200


def test_a_move_identifies_in_the_new_workspace_only_once_the_old_one_deleted(
        eu, worker, cio_fake, wait_for):
    django_cio.identify("p1", plan="pro")
    wait_for(lambda: cio_fake.store.people)
    cio_fake.configure(error_rate=1.0)  # the old workspace cannot take the delete yet
    django_cio.move("p1", "default", "eu", plan="pro")
    wait_for(lambda: cio_fake.received >= 3)  # the move failed and was tried again
    assert eu.store.people == {}
    cio_fake.configure(error_rate=0.0)
    wait_for(lambda: eu.store.people, timeout=60)
    assert cio_fake.store.people == {} and eu.store.people["p1"]["plan"] == "pro"


@pytest.fixture
def regional_users(eu, registrations):
    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["username"]

        def workspace(self, user):
            return "eu" if user.last_name == "eu" else None

    User.objects.bulk_create(User(username=f"u{n}", last_name="eu" if n % 3 == 0 else "")
                             for n in range(30))


@pytest.mark.parametrize("where", ["process", "workers"])
def test_a_backfill_fills_one_workspace_at_a_time(regional_users, eu, cio_fake, where,
                                                  worker, wait_for):
    more = ["--async"] if where == "workers" else ["--quiet"]
    call_command("cio_backfill", "auth.User", "--workspace", "eu", *more)
    wait_for(lambda: len(eu.store.people) == 10)
    assert cio_fake.store.people == {}
    eu.store.reset()
    call_command("cio_backfill", "auth.User", *more)  # a run per workspace
    wait_for(lambda: len(cio_fake.store.people) == 20 and len(eu.store.people) == 10)
    assert not set(eu.store.people) & set(cio_fake.store.people)
    wait_for(lambda: BackfillRun.objects.filter(status="done").count() == 3)
    runs = BackfillRun.objects.order_by("pk")
    assert [(run.options["workspace"], run.sent, run.skipped) for run in runs] == [
        ("eu", 10, 20), ("default", 20, 10), ("eu", 10, 20)]


def test_a_backfill_of_an_unknown_workspace_is_a_usage_error(regional_users):
    with pytest.raises(CommandError, match="'mars'") as failed:
        call_command("cio_backfill", "auth.User", "--workspace", "mars")
    assert failed.value.returncode == 2


def test_same_identify_in_two_workspaces_is_sent_to_both(eu, worker, cio_fake, wait_for):
    django_cio.identify("1", email="a@example.com", plan="pro")
    wait_for(lambda: "1" in cio_fake.store.people)
    django_cio.workspace("eu").identify("1", email="a@example.com", plan="pro")
    wait_for(lambda: "1" in eu.store.people, timeout=15)
    assert eu.store.people["1"] == {"email": "a@example.com", "plan": "pro"}


def test_move_back_and_forth_lands_each_time(eu, worker, cio_fake, wait_for):
    django_cio.identify("2", plan="pro")
    wait_for(lambda: "2" in cio_fake.store.people)
    django_cio.move("2", "default", "eu", plan="pro")
    wait_for(lambda: "2" in eu.store.people and "2" not in cio_fake.store.people)
    django_cio.move("2", "eu", "default", plan="pro")
    wait_for(lambda: "2" in cio_fake.store.people and "2" not in eu.store.people)
    django_cio.move("2", "default", "eu", plan="pro")
    wait_for(lambda: "2" in eu.store.people and "2" not in cio_fake.store.people)


def test_move_arrival_parked_when_the_broker_refuses_it(eu, worker, cio_fake, wait_for,
                                                       monkeypatch):
    """The old workspace took the delete, then the broker refuses the arrival's publish (a
    fault injected at the publish, to hit that moment exactly): the arrival waits in the
    Outbox for eu, and the relay delivers it to eu only."""

    real = retry.publish_ops
    failed = []

    def refuse_eu(ops, **kwargs):
        if any(op.get("workspace") == "eu" for op in ops) and not failed:
            failed.append(ops)
            raise ConnectionError("broker down")
        return real(ops, **kwargs)

    monkeypatch.setattr(retry, "publish_ops", refuse_eu)
    django_cio.identify("3", plan="pro")
    wait_for(lambda: "3" in cio_fake.store.people)
    django_cio.move("3", "default", "eu", plan="pro", region="eu")
    wait_for(lambda: Outbox.objects.exists() and "3" not in cio_fake.store.people)
    assert Outbox.objects.get().workspace == "eu"
    assert "3" not in eu.store.people
    relay()
    wait_for(lambda: "3" in eu.store.people)
    assert eu.store.people["3"] == {"plan": "pro", "region": "eu"}
    assert "3" not in cio_fake.store.people and not DeadLetter.objects.exists()


def test_a_hand_published_mixed_message_and_retries_keep_workspaces(eu, worker, cio_fake,
                                                                   wait_for):
    eu.fail_next(503, 503)
    ops = [Event("d-1", "tick", {"n": 1}).to_dict(),
           Event("e-1", "tick", {"n": 2}, workspace="eu").to_dict(),
           Identify("d-2", {"plan": "x"}).to_dict(),
           Identify("e-2", {"plan": "y"}, workspace="eu").to_dict()]
    publish_task(DELIVER, (ops,))  # all on the default queue
    publish_task(DELIVER, (list(reversed(ops)),), workspace="eu")  # and on eu's
    wait_for(lambda: len(eu.store.events) == 1 and "e-2" in eu.store.people, timeout=30)
    wait_for(lambda: len(cio_fake.store.events) == 1 and "d-2" in cio_fake.store.people)
    assert set(cio_fake.store.people) == {"d-2"} and set(eu.store.people) == {"e-2"}
    assert cio_fake.store.events[0]["person"] == "d-1"
    assert eu.store.events[0]["person"] == "e-1"
    assert not DeadLetter.objects.exists()


def test_an_op_of_an_unknown_workspace_is_a_dead_letter_and_the_rest_goes_out(
        eu, worker, cio_fake, wait_for):
    """A stale or hand-made message naming a workspace the settings do not have: its op is
    kept as a dead letter (replayable once the workspace is back), the others are delivered;
    before, the whole message went back to the queue again and again."""
    ops = [Event("d-1", "tick", {}).to_dict(),
           {**Event("a-1", "tick", {}).to_dict(), "workspace": "acme"}]
    publish_task(DELIVER, (ops,))
    wait_for(lambda: cio_fake.store.events and DeadLetter.objects.exists())
    letter = DeadLetter.objects.get()
    assert (letter.workspace, letter.reason) == ("acme", "unknown workspace 'acme'")
    assert [event["person"] for event in cio_fake.store.events] == ["d-1"]
