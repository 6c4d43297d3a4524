"""Every request body django-cio can send, against Customer.io's published request schemas
(django_cio/fakeserver/track-openapi.json, checked with jsonschema; the fake applies the same)."""

import json
import re

import pytest

from django_cio.client import encode_batch
from django_cio.fakeserver import spec
from django_cio.operations import (
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
    Page,
    Person,
    RemoveFromSegment,
    Screen,
    Suppress,
    Unsuppress,
)
from django_cio.operations.values import dumps

PEOPLE = {"id": "42", "odd id": "ada+1/x y", "email-shaped id": "ada@example.com",
          "email": Person(email="ada@example.com"), "cio_id": Person(cio_id="a1b2c3")}
NESTED = {"plan": "pro", "score": 9.5, "tags": ["a", "b"], "address": {"city": "Lyon"},
          "gone": None, "active": True, "since": 1_700_000_000}


def every_op(person):
    return [
        Identify(person, NESTED), Identify(person, {}, timestamp=None),
        Event(person, "ordered", {"total": 9.5, "items": [{"sku": "x"}]}),
        Page(person, "https://shop.example/cart?x=1", {"ref": "home"}), Screen(person, "Cart"),
        Delete(person), Move(person, to="eu", attributes=NESTED), Suppress(person),
        Unsuppress(person),
        AddDevice(person, "tok/1", "ios", last_used=1_700_000_000,
                  attributes={"app_version": "1.2", "push_enabled": True}),
        AddDevice(person, "tok/2", "android"), DeleteDevice(person, "tok/1"),
        Merge(person, "other"), Merge(Person(cio_id="c9"), person),
        AddRelationship(person, 1, "acme", {"role": "admin"}),
        AddRelationship(person, "2", "course/7"), DeleteRelationship(person, 1, "acme"),
        AddToSegment(7, [person, person.__class__(**{person.type: "b@example.com"})]
                     if isinstance(person, Person) else [person, "43"]),
        RemoveFromSegment(7, [person]),
    ]


OTHERS = [
    AnonymousEvent("anon 1", "viewed", {"n": 1}),
    AnonymousEvent("anon 1", "https://shop.example/", type="page"),
    AnonymousEvent("anon 1", "Home", type="screen"),
    IdentifyObject(1, "acme", {"name": "Acme", "seats": 30, "address": {"city": "Lyon"}}),
    IdentifyObject("3", "x/y z"), DeleteObject(1, "acme"),
]


def all_ops():
    return [*(op for person in PEOPLE.values() for op in every_op(person)), *OTHERS]


def test_the_cases_cover_every_track_op_kind():
    """(Transactional messages go to the App API, not the Track API: tests/test_messages.py.)"""
    track = {kind for kind, cls in OPERATIONS.items() if cls.api == "track"}
    assert {op.kind for op in all_ops()} == track


@pytest.mark.parametrize("op", all_ops(), ids=lambda op: op.kind)
def test_what_goes_alone_conforms(op):
    method, path, body = op.single()
    if path.startswith("/api/v2/"):
        assert spec.v2_problems(body) == []
    else:
        assert spec.v1_problems(method, path.split("?")[0], body) == [], (method, path)
    assert _documented(method, path.split("?")[0]), (method, path)


@pytest.mark.parametrize("person", PEOPLE.values(), ids=PEOPLE)
def test_every_batch_conforms_item_by_item_and_as_a_body(person):
    ops = [op for op in [*every_op(person), *OTHERS] if op.batchable]
    for op in ops:
        assert spec.v2_problems(op.v2()) == [], op.kind
        if op.v1_safe():  # the same op as v1 too (BATCH off, or over 32 KB)
            method, path, body = op.v1()
            assert spec.v1_problems(method, path, body) == [], op.kind
    assert spec._problems(spec._request_body("/api/v2/batch", "post"),
                          json.loads(encode_batch(ops))) == []


def test_the_schemas_refuse_what_customerio_would():
    person = {"type": "person", "identifiers": {"id": "42"}, "action": "identify"}
    assert spec.v2_problems({**person, "identifiers": {"id": 42}})[0][0] == "identifiers.id"
    assert spec.v2_problems({**person, "identifiers": {"id": "1", "email": "a@b.c"}})
    assert spec.v2_problems({**person, "action": "fly"}) == [("action",
                                                              "unknown type or action")]
    assert spec.v2_problems({**person, "timestamp": "now"})[0][0] == "timestamp"
    obj = {"type": "object", "identifiers": {"object_type_id": 1, "object_id": "a"},
           "action": "identify"}
    assert spec.v2_problems(obj)[0][0].startswith("identifiers")
    assert spec.v1_problems("POST", "/api/v1/segments/7/add_customers", {"ids": [1]})
    assert spec.v1_problems("PUT", "/api/v1/customers/42/devices", {"device": {"id": "t"}})
    message = spec.v1_problems("POST", "/api/v1/customers/1/events",
                               {"name": "x", "timestamp": "secret-value"})[0][1]
    assert "secret-value" not in message  # the fake never echoes a value (PII)


def test_the_document_is_customerio_s_and_says_where_it_comes_from():
    info = spec.document()["info"]
    assert "docs.customer.io" in info["description"] and "licence" in info["description"]
    assert len(dumps(spec.document())) < 100_000


def _documented(method, path):
    """Whether the document has this method on a path template that ``path`` fills."""
    for template, methods in spec.document()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if method.lower() in methods and re.match(pattern, path):
            return True
    return False
