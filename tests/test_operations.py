import datetime as dt
import enum
import json
import time
import uuid
from decimal import Decimal

import pytest
from django.utils.translation import gettext_lazy
from ulid import ULID

from django_cio.exceptions import ValidationError
from django_cio.operations import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_ID_BYTES,
    OPERATIONS,
    AddDevice,
    AddRelationship,
    AddToSegment,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    DeleteObject,
    DeleteRelationship,
    Event,
    Identify,
    IdentifyObject,
    Merge,
    Move,
    Operation,
    Page,
    RemoveFromSegment,
    Screen,
    SendEmail,
    SendPush,
    SendSms,
    Suppress,
    Unsuppress,
    dumps,
)
from django_cio.operations.values import json_safe
from django_cio.privacy import showing_ids

SECRET = "ada@example.com"


def one_of_each() -> list[Operation]:
    return [
        Identify("42", {"email": SECRET}, timestamp=1_700_000_000),
        Event("42", "signed_up", {"plan": "pro"}),
        Page("42", "https://shop.example/cart"),
        Screen("42", "Cart"),
        AnonymousEvent("anon-1", "viewed"),
        Delete("42"),
        Move("42", to="eu", attributes={"email": SECRET}, timestamp=1_700_000_000),
        Suppress("42"),
        Unsuppress("42"),
        AddDevice("42", "tok", "ios", last_used=1_700_000_000, attributes={"app": "1.0"}),
        DeleteDevice("42", "tok"),
        Merge("42", "43"),
        IdentifyObject(1, "acme", {"name": SECRET}),
        DeleteObject(1, "acme"),
        AddRelationship("42", 1, "acme", {"role": "admin"}),
        DeleteRelationship("42", 1, "acme"),
        AddToSegment(7, ["42", "43"]),
        RemoveFromSegment(7, ["42"]),
        SendEmail("42", "welcome", fields={"to": "ada@example.com"}),
        SendPush("42", 7),
        SendSms("42", 7, fields={"to": "+33612345678"}),
    ]


def test_every_kind_is_registered_and_covered():
    assert {op.kind for op in one_of_each()} == set(OPERATIONS)


# -- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("person_id", ["a/b", "x+y", "with space", "ünï©ødé", 7])
def test_odd_ids_are_kept_and_quoted(person_id):
    op = Identify(person_id, {})
    assert op.person_id == str(person_id)
    path = op.v1().path
    assert path.startswith("/api/v1/customers/")
    assert "/" not in path[len("/api/v1/customers/"):]
    assert " " not in path and "@" not in path and "+" not in path


def test_id_limit_counts_utf8_bytes():
    Identify("é" * (MAX_ID_BYTES // 2), {})  # 150 bytes: at the limit
    with pytest.raises(ValidationError) as error:
        Identify("é" * (MAX_ID_BYTES // 2) + "x", {})  # 151 bytes
    assert error.value.field == "person_id"
    assert "151 bytes" in str(error.value) and "150" in str(error.value)


@pytest.mark.parametrize("bad", ["", "   ", None, True, 1.5, b"bytes", ["42"]])
def test_bad_person_ids_are_refused(bad):
    with pytest.raises(ValidationError, match="identify: person_id"):
        Identify(bad, {})


def test_validation_error_is_a_value_error_and_never_echoes_values():
    with pytest.raises(ValueError) as error:
        Identify(SECRET + "x" * 200, {})
    assert SECRET not in str(error.value)


# -- attributes ---------------------------------------------------------------------------


def test_attribute_limits_at_and_past():
    Identify("1", {f"a{i}": i for i in range(MAX_ATTRIBUTES)})
    with pytest.raises(ValidationError, match="300") as error:
        Identify("1", {f"a{i}": i for i in range(MAX_ATTRIBUTES + 1)})
    assert error.value.field == "attributes"

    Identify("1", {"n" * MAX_ATTRIBUTE_NAME_BYTES: 1})
    with pytest.raises(ValidationError, match="name is 151 bytes; the limit is 150"):
        Identify("1", {"n" * (MAX_ATTRIBUTE_NAME_BYTES + 1): 1})

    Identify("1", {"bio": "ü" * (MAX_ATTRIBUTE_VALUE_BYTES // 2)})
    with pytest.raises(ValidationError) as error:
        Identify("1", {"bio": "ü" * (MAX_ATTRIBUTE_VALUE_BYTES // 2) + "!"})
    assert error.value.field == "attributes.bio"
    assert "1001 bytes" in str(error.value)


def test_non_string_attribute_values_are_measured_encoded():
    with pytest.raises(ValidationError, match=r"attributes\.tags"):
        Identify("1", {"tags": ["x" * 100] * 10})


def test_empty_attribute_name_is_refused():
    with pytest.raises(ValidationError, match="empty attribute name"):
        Identify("1", {"": 1})


def test_attribute_error_does_not_echo_the_value():
    with pytest.raises(ValidationError) as error:
        Identify("1", {"email": SECRET * 100})
    assert SECRET not in str(error.value)


# -- JSON normalisation -------------------------------------------------------------------


class Plan(enum.Enum):
    PRO = "pro"


def test_json_safe_normalises_common_python_values():
    moment = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    value = {
        "aware": moment,
        "naive": moment.replace(tzinfo=None),
        "other_zone": moment.astimezone(dt.timezone(dt.timedelta(hours=5))),
        "day": dt.date(2024, 1, 2),
        "price": Decimal("12.50"),
        "count": Decimal("3"),
        "uuid": uuid.UUID(int=1),
        "lazy": gettext_lazy("Hello"),
        "plan": Plan.PRO,
        "tuple": (1, 2),
        "nested": {"when": moment, 5: "int key"},
    }
    safe = json_safe(value, "identify", "attributes")
    assert safe == {
        "aware": 1704164645, "naive": 1704164645, "other_zone": 1704164645,
        "day": 1704153600, "price": 12.5, "count": 3,
        "uuid": "00000000-0000-0000-0000-000000000001", "lazy": "Hello", "plan": "pro",
        "tuple": [1, 2], "nested": {"when": 1704164645, "5": "int key"},
    }
    json.dumps(safe)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (float("nan"), "attributes.x"),
        (float("inf"), "attributes.x"),
        (Decimal("NaN"), "attributes.x"),
        (object(), "attributes.x"),
        ({"deep": [1, object()]}, "attributes.x.deep[1]"),
        ({(1, 2): "tuple key"}, "attributes.x"),
    ],
)
def test_json_safe_names_the_field_it_cannot_carry(value, field):
    with pytest.raises(ValidationError) as error:
        Identify("1", {"x": value})
    assert error.value.field == field


# -- events -------------------------------------------------------------------------------


def test_every_event_gets_a_ulid_and_a_timestamp_when_created():
    first, second = Event("1", "a"), Event("1", "a")
    assert first.id != second.id
    ULID.from_str(first.id)
    assert abs(first.timestamp - dt.datetime.now().timestamp()) < 5


def test_event_id_survives_a_round_trip():
    op = Event("1", "paid", {"amount": 3})
    again = Operation.from_dict(json.loads(json.dumps(op.to_dict())))
    assert again == op and again.id == op.id


def test_event_limits():
    Event("1", "n" * MAX_EVENT_NAME_BYTES)
    with pytest.raises(ValidationError, match="event: name is 101 bytes"):
        Event("1", "n" * (MAX_EVENT_NAME_BYTES + 1))
    with pytest.raises(ValidationError, match="event: name must be a non-blank string"):
        Event("1", " ")
    Event("1", "big", {"blob": "x" * (MAX_EVENT_DATA_BYTES - 20)})
    with pytest.raises(ValidationError, match="event: data is") as error:
        Event("1", "big", {"blob": "x" * MAX_EVENT_DATA_BYTES})
    assert error.value.field == "data"


def test_event_id_must_be_a_ulid_and_timestamp_seconds():
    with pytest.raises(ValidationError, match="event: id must be a ULID"):
        Event("1", "x", id="not-a-ulid")
    with pytest.raises(ValidationError, match="milliseconds"):
        Event("1", "x", timestamp=1_700_000_000_000)
    with pytest.raises(ValidationError, match="timestamp"):
        Event("1", "x", timestamp="yesterday")
    moment = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert Event("1", "x", timestamp=moment).timestamp == 1704067200


def test_page_urls_may_be_longer_than_event_names():
    url = "https://shop.example/" + "p" * 300
    assert Page("1", url).url == url
    with pytest.raises(ValidationError, match="page: name"):
        Page("1", "https://x/" + "p" * 1000)


def test_anonymous_event_has_no_v2_form():
    op = AnonymousEvent("anon", "x")
    assert not op.batchable
    with pytest.raises(ValidationError, match="anonymous_event: v2 does not exist"):
        op.v2()
    with pytest.raises(ValidationError, match="anonymous_event: type"):
        AnonymousEvent("anon", "x", type="view")


# -- devices and merge --------------------------------------------------------------------


def test_device_validation():
    with pytest.raises(ValidationError, match="add_device: platform"):
        AddDevice("1", "tok", "windows")
    with pytest.raises(ValidationError, match="add_device: token"):
        AddDevice("1", "", "ios")
    with pytest.raises(ValidationError, match=r"attributes\.size must be a string"):
        AddDevice("1", "tok", "ios", attributes={"size": 3})
    assert AddDevice("1", "t", "android", attributes={"push_enabled": False}).attributes == {
        "push_enabled": "false"
    }


def test_merge_needs_two_different_people():
    with pytest.raises(ValidationError, match="merge: secondary must differ"):
        Merge("1", "1")
    assert Merge("1", "2").person_id == "1"


# -- rendering ----------------------------------------------------------------------------


def test_v1_requests():
    ops = {op.kind: op for op in one_of_each()
           if op.v1_safe() and op.api == "track"}
    event, page, anonymous = ops["event"], ops["page"], ops["anonymous_event"]
    screen = ops["screen"]
    assert {kind: op.v1() for kind, op in ops.items()} == {
        "identify": ("PUT", "/api/v1/customers/42", {"email": SECRET,
                                                     "_timestamp": 1_700_000_000}),
        "event": ("POST", "/api/v1/customers/42/events", {
            "name": "signed_up", "data": {"plan": "pro"}, "id": event.id,
            "timestamp": event.timestamp}),
        "page": ("POST", "/api/v1/customers/42/events", {
            "name": "https://shop.example/cart", "data": {}, "id": page.id,
            "timestamp": page.timestamp, "type": "page"}),
        "screen": ("POST", "/api/v1/customers/42/events", {
            "name": "Cart", "data": {}, "id": screen.id, "timestamp": screen.timestamp,
            "type": "screen"}),
        "anonymous_event": ("POST", "/api/v1/events", {
            "name": "viewed", "data": {}, "id": anonymous.id, "timestamp": anonymous.timestamp,
            "anonymous_id": "anon-1"}),
        "delete": ("DELETE", "/api/v1/customers/42", {}),
        "move": ("DELETE", "/api/v1/customers/42", {}),  # then an identify elsewhere
        "suppress": ("POST", "/api/v1/customers/42/suppress", {}),
        "unsuppress": ("POST", "/api/v1/customers/42/unsuppress", {}),
        "add_device": ("PUT", "/api/v1/customers/42/devices", {"device": {
            "id": "tok", "platform": "ios", "last_used": 1_700_000_000,
            "attributes": {"app": "1.0"}}}),
        "delete_device": ("DELETE", "/api/v1/customers/42/devices/tok", {}),
        "merge": ("POST", "/api/v1/merge_customers", {
            "primary": {"id": "42"}, "secondary": {"id": "43"}}),
        "add_to_segment": ("POST", "/api/v1/segments/7/add_customers", {"ids": ["42", "43"]}),
        "remove_from_segment": ("POST", "/api/v1/segments/7/remove_customers",
                                {"ids": ["42"]}),
    }


def test_v2_items():
    person = {"type": "person", "identifiers": {"id": "42"}}
    acme = {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"}}
    ops = {op.kind: op for op in one_of_each() if op.batchable}
    event, page, screen = ops["event"], ops["page"], ops["screen"]
    assert {kind: op.v2() for kind, op in ops.items()} == {
        "identify": {**person, "action": "identify", "attributes": {"email": SECRET},
                     "timestamp": 1_700_000_000},
        "event": {**person, "action": "event", "name": "signed_up", "id": event.id,
                  "timestamp": event.timestamp, "attributes": {"plan": "pro"}},
        "page": {**person, "action": "page", "name": "https://shop.example/cart",
                 "id": page.id, "timestamp": page.timestamp, "attributes": {}},
        "screen": {**person, "action": "screen", "name": "Cart", "id": screen.id,
                   "timestamp": screen.timestamp, "attributes": {}},
        "delete": {**person, "action": "delete"},
        "move": {**person, "action": "delete"},
        "suppress": {**person, "action": "suppress"},
        "unsuppress": {**person, "action": "unsuppress"},
        "add_device": {**person, "action": "add_device", "device": {
            "token": "tok", "platform": "ios", "last_used": 1_700_000_000,
            "attributes": {"app": "1.0"}}},
        "delete_device": {**person, "action": "delete_device", "device": {"token": "tok"}},
        "merge": {"type": "person", "action": "merge", "primary": {"id": "42"},
                  "secondary": {"id": "43"}},
        "identify_object": {**acme, "action": "identify", "attributes": {"name": SECRET}},
        "delete_object": {**acme, "action": "delete"},
        "add_relationship": {**person, "action": "add_relationships", "cio_relationships": [
            {"identifiers": acme["identifiers"], "relationship_attributes": {"role": "admin"}}]},
        "delete_relationship": {**person, "action": "delete_relationships",
                                "cio_relationships": [{"identifiers": acme["identifiers"]}]},
    }


@pytest.mark.parametrize("op", one_of_each(), ids=lambda op: op.kind)
def test_every_kind_round_trips_through_json(op):
    assert Operation.from_dict(json.loads(dumps(op.to_dict()))) == op


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"kind": "teleport"}, "operation: kind"),
        ({}, "operation: kind"),
        ("not a dict", "operation: kind"),
        ({"kind": "identify", "person_id": "1", "colour": "red"}, "identify: fields"),
        ({"kind": "identify", "person_id": ""}, "identify: person_id"),
    ],
)
def test_malformed_op_dicts_raise_validation_errors(data, match):
    with pytest.raises(ValidationError, match=match):
        Operation.from_dict(data)


def test_redacted_keeps_no_values():
    text = json.dumps([op.redacted() for op in one_of_each()])
    assert SECRET not in text and '"42"' not in text and "tok" not in text
    assert "email" in text  # field names are fine


# -- edge cases found in review -----------------------------------------------------------


def test_fcm_sized_device_tokens_are_accepted():
    token = "f" * 163  # FCM registration tokens run past the 150-byte id limit
    assert AddDevice("1", token, "android").token == token
    with pytest.raises(ValidationError, match="add_device: token is 1001 bytes"):
        AddDevice("1", "f" * 1001, "android")


@pytest.mark.parametrize("dots", [".", ".."])
def test_dot_segments_are_refused_as_ids(dots):
    """urllib3 resolves them, so the request would reach another endpoint."""
    with pytest.raises(ValidationError, match=r"must not be '\.' or '\.\.'"):
        Event(dots, "x")
    with pytest.raises(ValidationError, match="delete_device: token"):
        DeleteDevice("42", dots)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Identify("\ud800", {}), "person_id"),
        (lambda: Identify("1", {"bio": "a\ud800"}), "attributes.bio"),
        (lambda: Identify("1", {"\ud800": 1}), "attributes"),
        (lambda: Event("1", "x", {"n": 10**5000}), "data.n"),
        (lambda: Event("1", "x\udfff"), "name"),
    ],
)
def test_odd_unicode_and_huge_numbers_are_validation_errors(build, field):
    with pytest.raises(ValidationError) as error:
        build()
    assert error.value.field == field


def test_cycles_and_deep_nesting_are_validation_errors():
    data: dict = {}
    data["self"] = data
    with pytest.raises(ValidationError, match="nests deeper than 32"):
        Event("1", "x", data)


def test_data_keys_that_may_be_personal_are_not_named():
    with pytest.raises(ValidationError) as error:
        Event("1", "x", {SECRET: object()})
    assert SECRET not in str(error.value)
    assert error.value.field == "data.<key>"


def test_from_dict_with_an_unhashable_kind():
    with pytest.raises(ValidationError, match="operation: kind"):
        Operation.from_dict({"kind": ["identify"]})


def test_repr_is_redacted():
    text = repr(Identify(SECRET, {"email": SECRET})) + repr(Event(SECRET, "paid", {"n": 1}))
    assert SECRET not in text
    assert "<Identify kind=identify person=" in text and "attributes=['email']" in text


def test_repr_shows_the_person_id_only_where_the_developer_alone_sees_it(settings):
    op = Identify(SECRET, {"email": SECRET})
    with showing_ids():  # cio_outbox, a dry run in a terminal
        assert f"person={SECRET} " in repr(op)
    settings.DEBUG = True
    assert f"person={SECRET} " in repr(op)
    assert SECRET not in str(op.redacted())  # what logs and stored reasons use: never
    settings.DEBUG = False
    assert SECRET not in repr(op)


def test_cio_outbox_shows_person_ids_in_test_output(cio_outbox):
    assert "person=42 " in repr(Identify("42", {}))


def test_person_hash_is_keyed_with_secret_key():
    import hashlib

    from django.test import override_settings

    from django_cio.privacy import person_hash

    assert person_hash(SECRET) != hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    with override_settings(SECRET_KEY="another"):
        other = person_hash(SECRET)
    assert other != person_hash(SECRET) and len(other) == 12


def test_naive_datetimes_are_in_django_time_zone():
    from django.test import override_settings

    naive = dt.datetime(2024, 1, 1, 12, 0)
    with override_settings(TIME_ZONE="Europe/Paris"):
        assert Identify("1", {"at": naive}).attributes["at"] == 1704106800  # 11:00 UTC
    assert Identify("1", {"at": naive}).attributes["at"] == 1704110400  # tests run in UTC


def test_fits_v2():
    assert Identify("1", {"a": 1}).fits_v2()
    assert not AnonymousEvent("a", "x").fits_v2()
    assert not Event("1", "x", {"blob": "y" * 40_000}).fits_v2()  # valid, but v1 only


@pytest.mark.parametrize("build", [
    lambda: Identify("a\x00b", {}),
    lambda: Identify("u1", {"bio": "a\x00b"}),
    lambda: Identify("u1", {"a\x00": 1}),
    lambda: Event("u1", "sign\x00up", {}),
    lambda: Event("u1", "signup", {"tags": ["ok", "x\x00"]}),
])
def test_nul_characters_are_refused(build):
    with pytest.raises(ValidationError, match="NUL"):
        build()


def test_an_identify_carries_the_time_it_was_made_and_old_messages_none():
    before = int(time.time())
    op = Identify("42", {"plan": "pro"})
    assert before <= op.timestamp <= time.time()
    assert Operation.from_dict(op.to_dict()) == op  # a retry keeps the time of the change
    queued_by_an_older_version = {"kind": "identify", "person_id": "42", "attributes": {}}
    old = Operation.from_dict(queued_by_an_older_version)
    assert old.timestamp is None and "_timestamp" not in old.v1().body
    assert "timestamp" not in old.v2()
    with pytest.raises(ValidationError, match="identify: timestamp"):
        Identify("42", {}, timestamp=1_700_000_000_000)  # milliseconds
