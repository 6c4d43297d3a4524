"""Several workspaces: their settings, which one an op goes to, and that nothing mixes them
(locmem backend: what would be sent, per workspace)."""

import dataclasses

import pytest
from django.contrib.auth.models import User
from django.db import transaction

import django_cio
from django_cio.broker.messages import Message
from django_cio.broker.publish import split
from django_cio.checks import check_settings
from django_cio.conf import find_problems, get_settings
from django_cio.delivery.engine import deliver_messages
from django_cio.exceptions import ConfigurationError, ValidationError
from django_cio.operations import Event, Identify, Operation
from django_cio.signals import pre_send

pytestmark = pytest.mark.django_db(transaction=True)

EU = {"SITE_ID": "eu-site", "API_KEY": "eu-key-never-shown", "REGION": "eu",
      "RATE_LIMIT": "20/s"}


@pytest.fixture
def two_workspaces(settings, cio_outbox):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": {"eu": EU}}
    return cio_outbox


def route_eu_people(op: Operation) -> str | None:
    """A project's router: people whose id starts with "eu-" live in the EU."""
    return "eu" if op.person_id.startswith("eu-") else None


# -- settings -------------------------------------------------------------------------------

def test_a_named_workspace_has_its_own_keys_and_the_flat_ones_for_the_rest(two_workspaces):
    default, eu = get_settings(), get_settings("eu")
    assert (eu.workspace, eu.site_id, eu.region, eu.rate_limit) == ("eu", "eu-site", "eu", "20/s")
    assert eu.base_url == "https://track-eu.customer.io"  # not the flat TRACK_URL
    assert eu.queue == f"{default.queue}.eu"  # its own queue, next to the default one
    assert (eu.batch, eu.timeout, eu.max_retries) == (default.batch, default.timeout,
                                                      default.max_retries)
    assert default.workspace == "default" and default.workspace_names == ("default", "eu")
    assert "eu-key-never-shown" not in repr(eu) + repr(default)


def test_the_account_is_never_inherited_from_the_default_workspace(settings):
    # The default workspace points at a proxy; EU data must not follow it to the US.
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "TRACK_URL": "https://proxy.example",
                           "WORKSPACES": {"eu": {"REGION": "eu"}}}
    eu = get_settings("eu")
    assert (eu.site_id, eu.api_key, eu.base_url) == (None, None, "https://track-eu.customer.io")
    assert (eu.app_api_key, eu.app_base_url) == (None, "https://api-eu.customer.io")
    assert get_settings("eu").workspace_names == ("default", "eu")
    missing = [m.msg for m in check_settings() if m.id == "django_cio.E002"]
    assert missing == ["CUSTOMERIO['WORKSPACES']['eu']['SITE_ID', 'API_KEY'] missing: "
                       "required by django_cio.backends.http.TrackAPIBackend"]


def test_an_unknown_workspace_is_named_at_the_call(two_workspaces):
    with pytest.raises(ConfigurationError, match=r"'us'.*'default', 'eu'"):
        django_cio.workspace("us")
    with pytest.raises(ConfigurationError, match="'us'"):
        get_settings("us")


@pytest.mark.parametrize(("workspaces", "message"), [
    ({"EU": EU}, "CUSTOMERIO['WORKSPACES']['EU']: a workspace name must be lowercase"),
    ({"default": EU}, "not 'default'"),
    ({"eu": {**EU, "SITEID": "x"}}, "CUSTOMERIO['WORKSPACES']['eu']: unknown key(s) SITEID"),
    ({"eu": {**EU, "REGION": "mars"}}, "CUSTOMERIO['WORKSPACES']['eu']['REGION'] must be one"),
    ({"eu": {**EU, "RATE_LIMIT": "fast"}}, "CUSTOMERIO['WORKSPACES']['eu']['RATE_LIMIT']"),
    ({"eu": {**EU, "QUEUE": "shared"}, "us": {**EU, "QUEUE": "shared"}},
     "CUSTOMERIO['WORKSPACES']['us']['QUEUE'] is also the queue of workspace 'eu'"),
    ({"eu": "eu-site"}, "CUSTOMERIO['WORKSPACES']['eu'] must be a dict"),
    ([], "CUSTOMERIO['WORKSPACES'] must be a dict"),
])
def test_a_bad_workspace_is_reported_by_name(settings, workspaces, message):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": workspaces}
    problems = find_problems()
    assert any(message in problem.message for problem in problems), problems
    assert all("eu-key-never-shown" not in problem.message for problem in problems)
    with pytest.raises(ConfigurationError):
        get_settings()


def test_a_workspace_queue_must_differ_from_the_default_one(settings):
    queue = settings.CUSTOMERIO["QUEUE"]
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "WORKSPACES": {"eu": {**EU, "QUEUE": queue}}}
    assert any("is also the queue of workspace 'default'" in p.message for p in find_problems())


# -- routing --------------------------------------------------------------------------------

def test_ops_go_to_the_named_workspace_else_the_router_else_default(two_workspaces, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO,
                           "ROUTER": "tests.test_workspaces.route_eu_people"}
    django_cio.track("eu-1", "signed_up")  # the router
    django_cio.track("us-1", "signed_up")  # the router says nothing: default
    django_cio.workspace("eu").track("us-2", "signed_up")  # named beats the router
    django_cio.workspace("default").identify("eu-2", plan="pro")
    assert [(op.person_id, op.workspace) for op in two_workspaces] == [
        ("eu-1", "eu"), ("us-1", "default"), ("us-2", "eu"), ("eu-2", "default")]


def test_a_registered_model_routes_each_row_and_its_logins(two_workspaces, registrations,
                                                         settings, client):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "AUTH_SIGNALS": True}

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["username"]
        delete_on_model_delete = True

        def workspace(self, user):  # a data_region field would do
            return "eu" if user.last_name == "Eu" else None

    django_cio.register_event(User, name="renamed", person="pk", on="update",
                              workspace=UserCustomer().workspace)
    eu = User.objects.create_user(username="ada", last_name="Eu", password="pw")
    us = User.objects.create(username="bob")
    eu.save()
    client.login(username="ada", password="pw")
    eu.delete()
    us.delete()
    assert [(op.kind, getattr(op, "name", ""), op.workspace) for op in two_workspaces] == [
        ("identify", "", "eu"), ("identify", "", "default"),  # created
        ("identify", "", "eu"), ("event", "renamed", "eu"),  # saved
        ("event", "renamed", "eu"),  # the login saves last_login
        ("identify", "", "eu"), ("event", "login", "eu"),  # logged in
        ("delete", "", "eu"), ("delete", "", "default")]


def test_a_router_naming_an_unknown_workspace_fails_the_call(two_workspaces, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "ROUTER": "tests.test_workspaces.to_mars"}
    with pytest.raises(ConfigurationError, match="'mars'"):
        django_cio.track("1", "signed_up")


def to_mars(op: Operation) -> str:
    return "mars"


def test_a_router_that_cannot_be_imported_is_a_check_error(settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "ROUTER": "tests.nowhere.route"}
    assert [m.id for m in check_settings()] == ["django_cio.E029"]
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        django_cio.track("1", "signed_up")


def test_an_op_carries_its_workspace_through_the_queue(two_workspaces):
    op = Event("1", "signed_up", {}, workspace="eu")
    assert Operation.from_dict(op.to_dict()).workspace == "eu"
    assert "workspace" not in Event("1", "signed_up", {}, workspace="default").to_dict()
    assert Operation.from_dict(Identify("1", {}).to_dict()).workspace is None  # routed later
    assert op == dataclasses.replace(op, workspace="default")  # as tests compare ops


def test_a_message_never_holds_two_workspaces_ops(two_workspaces):
    ops = [Event(str(n), "e", {}, workspace=("eu" if n % 2 else "default")).to_dict()
           for n in range(6)]
    messages = list(split(ops))
    assert [{op.get("workspace", "default") for op in message} for message in messages] == [
        {"default"}, {"eu"}]


def test_one_delivery_per_workspace_even_when_a_message_mixes_them(two_workspaces):
    requests = []

    def record(sender, ops, **kwargs):
        requests.append({op.workspace or "default" for op in ops})

    pre_send.connect(record)
    try:
        mixed = [Event("1", "e", {}).to_dict(), Event("2", "e", {}, workspace="eu").to_dict()]
        deliver_messages([Message(mixed), Message([Event("3", "e", {}).to_dict()])])
    finally:
        pre_send.disconnect(record)
    assert requests == [{"default"}, {"eu"}]
    assert sorted(op.person_id for op in two_workspaces) == ["1", "2", "3"]


def test_a_transaction_of_two_workspaces_ops_commits_both(two_workspaces):
    with transaction.atomic():
        django_cio.identify("1", plan="pro")
        django_cio.workspace("eu").identify("2", plan="pro")
        User.objects.create(username="ada")
        assert two_workspaces == []
    assert [(op.person_id, op.workspace) for op in two_workspaces] == [
        ("1", "default"), ("2", "eu")]


def test_a_moved_person_is_deleted_in_the_old_workspace_then_identified_in_the_new(
        two_workspaces):
    django_cio.move("1", "default", "eu", plan="pro")
    (move, arrival) = two_workspaces
    assert (move.kind, move.workspace, move.to) == ("move", "default", "eu")
    assert move.v2()["action"] == "delete"
    assert (arrival.kind, arrival.workspace, arrival.attributes) == ("identify", "eu",
                                                                     {"plan": "pro"})
    assert arrival.timestamp == move.timestamp  # the time of the move, however late it lands


def test_a_move_names_two_known_workspaces(two_workspaces):
    with pytest.raises(ValidationError, match="move: to"):
        django_cio.move("1", "eu", "eu")
    with pytest.raises(ConfigurationError, match="'mars'"):
        django_cio.move("1", "default", "mars")
    assert two_workspaces == []
