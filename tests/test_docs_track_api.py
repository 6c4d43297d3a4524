"""The snippets docs/objects.md and docs/models.md mark with ``<!-- test: ... -->``, run as
written (the pages' ``.models`` are the test project's)."""

import re
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.contrib.auth.models import User

import django_cio
from tests.models import Company, Employee, Team

pytestmark = pytest.mark.django_db(transaction=True)

DOCS = Path(__file__).parents[1] / "docs"
MARKED = re.compile(r"<!-- test: (?P<name>[^>]*?) -->\n```\w*\n(?P<code>.*?)```", re.S)


def run_snippet(name: str, page: str = "objects.md", **names) -> None:
    text = (DOCS / page).read_text()
    code = next(m["code"] for m in MARKED.finditer(text) if m["name"] == name)
    exec(code.replace("from .models import", "from tests.models import"),
         {"django_cio": django_cio, **names})


def test_the_models_snippet_sends_companies_people_and_relationships(registrations,
                                                                      cio_outbox):
    run_snippet("models")
    acme = Company.objects.create(name="Acme", plan="pro")
    Employee.objects.create(email="ada@example.com", company=acme, role="admin")
    assert [op.kind for op in cio_outbox] == ["identify_object", "identify",
                                              "add_relationship"]
    assert cio_outbox[1].id_type == "email"
    assert cio_outbox[2].attributes == {"role": "admin"}


def test_the_calls_snippet_queues_what_it_says(cio_outbox):
    run_snippet("calls")
    assert [op.kind for op in cio_outbox] == [
        "identify_object", "add_relationship", "add_relationship", "delete_relationship",
        "delete_object"]


def test_the_segments_snippet_keeps_a_team_in_its_segment(registrations, cio_outbox):
    run_snippet("segments")
    team = Team.objects.create(name="beta", cio_segment_id=9)
    team.members.add(User.objects.create(username="ada"))
    assert [(op.kind, op.segment_id) for op in cio_outbox] == [
        ("add_to_segment", 7), ("remove_from_segment", 7), ("add_to_segment", 9)]


def test_the_identifier_snippet_names_people_each_way(cio_outbox):
    run_snippet("identifiers", "models.md")
    assert [(op.kind, op.id_types) for op in cio_outbox] == [
        ("identify", {"id"}), ("identify", {"email"}), ("event", {"cio_id"}),
        ("merge", {"email", "id"})]


def test_the_at_snippet_backdates(cio_outbox, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO,
                           "WORKSPACES": {"eu": {"SITE_ID": "eu", "API_KEY": "k"}}}
    order = types.SimpleNamespace(created=datetime(2021, 5, 4, tzinfo=timezone.utc), user_id=7,
                                  total=30)
    row = types.SimpleNamespace(updated=datetime(2022, 1, 1, tzinfo=timezone.utc), user_id=7,
                                plan="pro")
    run_snippet("at", "models.md", order=order, row=row)
    assert [(op.timestamp, op.workspace) for op in cio_outbox] == [
        (int(order.created.timestamp()), "default"), (int(row.updated.timestamp()), "default"),
        (1_600_000_000, "eu")]
