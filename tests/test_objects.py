"""Objects, relationships and manual segments: the ops, and from models (register_object,
Customer.relationships, register_segment)."""

import logging

import pytest
from django.contrib.auth.models import User

import django_cio
from django_cio import Person
from django_cio.exceptions import ConfigurationError, ValidationError
from django_cio.operations import (
    MAX_V2_OP_BYTES,
    AddRelationship,
    AddToSegment,
    DeleteObject,
    DeleteRelationship,
    IdentifyObject,
    RemoveFromSegment,
)
from tests.models import Company, Employee, Team

pytestmark = pytest.mark.django_db(transaction=True)


def test_object_ops_are_checked_at_the_call():
    for bad in (0, -1, "one", True, 1.5, None):
        with pytest.raises(ValidationError, match="identify_object: object_type_id"):
            IdentifyObject(bad, "acme")
    with pytest.raises(ValidationError, match="delete_object: object_id"):
        DeleteObject(1, "")
    with pytest.raises(ValidationError, match="identify_object: attributes"):
        IdentifyObject(1, "acme", {f"k{n}": "x" * 1000 for n in range(101)})
    with pytest.raises(ValidationError, match="delete_relationship: attributes must be empty"):
        DeleteRelationship("42", 1, "acme", {"role": "admin"})
    assert IdentifyObject("01", "acme").object_type_id == "1"
    op = AddRelationship(Person(email="ada@example.com"), 1, 7)
    assert (op.object_id, op.single().path) == ("7", "/api/v2/entity")
    with pytest.raises(ValidationError, match="add_relationship: v1 does not exist"):
        op.v1()
    assert len(IdentifyObject(1, "a", {"k": "x" * 900}).v2_bytes) < MAX_V2_OP_BYTES


def test_segment_ops_are_checked_at_the_call():
    with pytest.raises(ValidationError, match="add_to_segment: segment_id"):
        AddToSegment(0, ["42"])
    with pytest.raises(ValidationError, match="add_to_segment: person_ids must be a list"):
        AddToSegment(7, [])
    with pytest.raises(ValidationError, match="add_to_segment: person_ids must be a list"):
        AddToSegment(7, [str(n) for n in range(1001)])
    with pytest.raises(ValidationError, match="person_ids must all be named by one"):
        AddToSegment(7, ["42", Person(email="a@example.com")])
    with pytest.raises(ValidationError, match=r"person_ids\[1\] is not an email"):
        AddToSegment(7, [Person(email="a@example.com"), Person(email="b")])
    op = RemoveFromSegment("7", [Person(cio_id="c1"), Person(cio_id="c1")])
    assert op.v1() == ("POST", "/api/v1/segments/7/remove_customers?id_type=cio_id",
                       {"ids": ["c1"]})
    assert not op.batchable and op.redacted()["people"] == 1


def test_the_verbs_queue_objects_relationships_and_segments_in_chunks(cio_outbox):
    django_cio.identify_object(1, "acme", name="Acme")
    django_cio.add_relationship(42, 1, "acme", role="admin")
    django_cio.delete_relationship(42, 1, "acme")
    django_cio.delete_object(1, "acme")
    django_cio.add_to_segment(7, (str(n) for n in range(2500)))
    django_cio.remove_from_segment(7, [Person(email="a@example.com")])
    kinds = [op.kind for op in cio_outbox]
    assert kinds == ["identify_object", "add_relationship", "delete_relationship",
                     "delete_object", *["add_to_segment"] * 3, "remove_from_segment"]
    assert [len(op.person_ids) for op in cio_outbox[4:7]] == [1000, 1000, 500]


def test_a_company_row_is_an_object_and_a_person_s_save_relates_them(companies, cio_outbox):
    acme = Company.objects.create(name="Acme", plan="pro")
    Employee.objects.create(email="ada@example.com", company=acme, role="admin")
    Employee.objects.create(email="bob@example.com")  # no company: no relationship
    company, identify, relationship, lone = cio_outbox
    assert (company.kind, company.object_id, company.attributes) == (
        "identify_object", str(acme.pk), {"name": "Acme", "plan": "pro"})
    assert (identify.kind, identify.id_type, identify.person_id) == (
        "identify", "email", "ada@example.com")
    assert relationship.v2()["cio_relationships"] == [{
        "identifiers": {"object_type_id": "1", "object_id": str(acme.pk)},
        "relationship_attributes": {"role": "admin"}}]
    assert lone.kind == "identify"
    cio_outbox.clear()
    acme_id = str(acme.pk)
    acme.delete()
    assert [(op.kind, op.object_id) for op in cio_outbox] == [("delete_object", acme_id)]


def test_registering_an_object_badly_fails_at_start_up(registrations):
    with pytest.raises(ConfigurationError, match="object_type_id must be a positive"):
        django_cio.register_object(Company, object_type_id="companies")
    with pytest.raises(ConfigurationError, match="does not have: nmae"):
        django_cio.register_object(Company, object_type_id=1, fields=["nmae"])
    django_cio.register_object(Company, object_type_id=1)
    with pytest.raises(ConfigurationError, match="as an object twice"):
        django_cio.register_object(Company, object_type_id=2)


def test_a_relationship_to_an_unregistered_row_is_logged_not_raised(registrations, cio_outbox,
                                                                   caplog):
    @django_cio.register(Employee)
    class EmployeeCustomer(django_cio.Customer):
        def relationships(self, employee):
            return [employee.company]

    with caplog.at_level(logging.ERROR, logger="django_cio"):
        Employee.objects.create(email="ada@example.com", company=Company.objects.create())
    assert [op.kind for op in cio_outbox] == ["identify"]
    assert "not a registered object" in caplog.text and "ada@" not in caplog.text


@pytest.fixture
def teams(registrations):
    django_cio.register_segment(Team, members="members", segment_id="cio_segment_id")
    return registrations


def test_a_team_s_members_are_kept_in_its_segment(teams, cio_outbox):
    ada, bob = (User.objects.create(username=name) for name in ("ada", "bob"))
    team, unsynced = Team.objects.create(name="beta", cio_segment_id=5), Team.objects.create()
    team.members.add(ada, bob)
    unsynced.members.add(ada)
    team.members.remove(bob)
    bob.teams.add(team)  # from the member's side
    team.members.clear()
    ops = [(op.kind, op.segment_id, sorted(op.person_ids)) for op in cio_outbox]
    assert ops == [("add_to_segment", 5, sorted([str(ada.pk), str(bob.pk)])),
                   ("remove_from_segment", 5, [str(bob.pk)]),
                   ("add_to_segment", 5, [str(bob.pk)]),
                   ("remove_from_segment", 5, sorted([str(ada.pk), str(bob.pk)]))]


def test_a_segment_needs_a_many_to_many_relation(registrations):
    with pytest.raises(ConfigurationError, match="not a many-to-many relation"):
        django_cio.register_segment(Team, members="name", segment_id="cio_segment_id")
    with pytest.raises(ConfigurationError, match="has no 'segment'"):
        django_cio.register_segment(Team, members="members", segment_id="segment")


def test_one_member_who_cannot_be_named_keeps_no_one_else_out(registrations, cio_outbox, caplog):
    """Found by an attack: one member without a valid email dropped the whole chunk."""
    django_cio.register_segment(Team, members="members", segment_id="cio_segment_id")

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        def person_id(self, user):
            return Person(email=user.email)

    ada = User.objects.create(username="ada", email="ada@example.com")
    bob = User.objects.create(username="bob", email="bob-at-nowhere")
    team = Team.objects.create(name="beta", cio_segment_id=5)
    cio_outbox.clear()
    with caplog.at_level(logging.ERROR, logger="django_cio"):
        team.members.add(ada, bob)
    assert [(op.kind, op.person_ids, op.id_type) for op in cio_outbox] == [
        ("add_to_segment", ["ada@example.com"], "email")]
    assert "1 member(s) left out" in caplog.text and "bob" not in caplog.text
