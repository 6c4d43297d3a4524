"""People by id, email or cio_id: one meaning with BATCH on or off; screens; backdating."""

from datetime import datetime, timezone

import pytest

import django_cio
from django_cio import Person
from django_cio.exceptions import ValidationError
from django_cio.operations import (
    MAX_V2_OP_BYTES,
    AnonymousEvent,
    Delete,
    Event,
    Identify,
    Merge,
    Operation,
    Screen,
)
from django_cio.packing import collapse


def test_a_person_is_named_by_exactly_one_identifier():
    assert (Person(email="ada@example.com").type, Person(cio_id="a1").type) == ("email", "cio_id")
    assert Person(id=42) == Person(id=42) and "ada" not in repr(Person(email="ada@example.com"))
    for bad in ({}, {"id": 1, "email": "a@b.c"}):
        with pytest.raises(ValidationError, match="person: identifier"):
            Person(**bad)
    with pytest.raises(ValidationError, match="identify: person_id is not an email"):
        Identify(Person(email="ada"), {})
    with pytest.raises(ValidationError, match="identify: id_type must be one of"):
        Identify("ada", {}, id_type="phone")


@pytest.mark.parametrize(("person", "identifiers"), [
    (Person(email="ada@example.com"), {"email": "ada@example.com"}),
    (Person(cio_id="a1b2"), {"cio_id": "a1b2"}),
    ("ada@example.com", {"id": "ada@example.com"}),  # v1 would read it as an email
    ("cio_a1b2", {"id": "cio_a1b2"}),  # v1 would read it as a cio_id
])
def test_what_v1_would_misread_goes_alone_through_v2_entity(person, identifiers):
    op = Event(person, "signed_up")
    assert op.v2()["identifiers"] == identifiers
    assert op.single() == ("POST", "/api/v2/entity", op.v2())


def test_a_plain_id_still_goes_alone_as_v1():
    op = Event("42", "signed_up")
    assert op.single() == op.v1() and op.single().path == "/api/v1/customers/42/events"


def test_merge_by_any_identifiers_names_them_in_v1_and_v2():
    op = Merge(Person(email="ada@example.com"), Person(cio_id="c9"))
    body = {"primary": {"email": "ada@example.com"}, "secondary": {"cio_id": "c9"}}
    assert op.single() == ("POST", "/api/v1/merge_customers", body)
    assert op.v2() == {"type": "person", "action": "merge", **body}
    with pytest.raises(ValidationError, match="merge: secondary must differ"):
        Merge(Person(email="a@b.c"), Person(email="a@b.c"))
    Merge("a@b.c", Person(email="a@b.c"))  # an id and an email: two names, maybe two people


def test_the_identifier_type_survives_the_queue_and_plain_ids_keep_their_old_form():
    op = Identify(Person(email="ada@example.com"), {"plan": "pro"}, timestamp=1)
    assert Operation.from_dict(op.to_dict()) == op
    assert Operation.from_dict(op.to_dict()).id_type == "email"
    assert "id_type" not in Identify("42", {}).to_dict()
    assert "primary_type" not in Merge("1", "2").to_dict()


def test_an_op_that_must_go_as_v2_is_held_to_the_v2_size_at_the_call():
    attributes = {f"k{n}": "x" * 1000 for n in range(40)}
    Identify("42", attributes)  # v1 carries it
    with pytest.raises(ValidationError) as error:
        Identify(Person(email="ada@example.com"), attributes)
    assert error.value.field == "attributes" and f"{MAX_V2_OP_BYTES}" in str(error.value)


def test_identifies_are_merged_only_past_ops_that_cannot_name_the_same_person():
    by_email = Person(email="ada@example.com")
    ops = [Identify(by_email, {"plan": "a"}, timestamp=1), Event("42", "upgraded"),
           Identify(by_email, {"plan": "b"}, timestamp=2)]
    assert collapse(ops) == ops  # 42 may be ada: her second identify stays after the event
    ops = [Identify("42", {"plan": "a"}, timestamp=1), Event(by_email, "upgraded"),
           Identify("42", {"plan": "b"}, timestamp=2)]
    assert collapse(ops) == ops
    ops = [Identify("42", {"plan": "a"}, timestamp=1), Delete(Person(cio_id="c1")),
           Identify("42", {"plan": "b"}, timestamp=2)]
    assert collapse(ops) == ops
    same = [Identify(by_email, {"plan": "a"}, timestamp=1),
            Identify(by_email, {"plan": "b"}, timestamp=2)]
    assert [op.attributes for op in collapse(same)] == [{"plan": "b"}]


def test_screens_for_people_and_visitors(cio_outbox):
    django_cio.screen(Person(email="ada@example.com"), "Cart", items=2)
    django_cio.screen_anonymous("anon-1", "Home")
    django_cio.page_anonymous("anon-1", "https://shop.example/")
    screen, anonymous, page = cio_outbox
    assert isinstance(screen, Screen) and screen.v2()["action"] == "screen"
    assert screen.v1_safe() is False and screen.v2()["identifiers"] == {"email": "ada@example.com"}
    assert (anonymous.type, anonymous.v1().body["type"]) == ("screen", "screen")
    assert isinstance(page, AnonymousEvent) and page.type == "page"


def test_at_backdates_identifies_and_events_and_timestamp_stays_data(cio_outbox):
    ordered = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    django_cio.at(ordered).track(7, "order_placed", total=30)
    django_cio.at(1_600_000_000).identify(7, plan="pro")
    django_cio.track(7, "rated", timestamp="yesterday")  # a user's own "timestamp" field
    event, identify, rated = cio_outbox
    assert (event.timestamp, event.data) == (int(ordered.timestamp()), {"total": 30})
    assert identify.timestamp == 1_600_000_000
    assert rated.data == {"timestamp": "yesterday"} and rated.timestamp != 1_600_000_000
    with pytest.raises(ValidationError, match="at: when"):
        django_cio.at("yesterday")
    assert repr(django_cio.workspace("default").at(5)) == "<Workspace default at 5>"
