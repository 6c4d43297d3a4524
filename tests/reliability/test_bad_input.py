"""Bad input: whatever a caller, a registered model or a broker message holds, django-cio either
takes it, and then the Track API takes it too, or refuses it where it is made: a
``ValidationError`` naming the field at call time, a logged skip for a model save, a dead letter
for a task message. Never another exception, never a 400 or a 207 refusal from the server.

Property-based (hypothesis) over the public API, the registry and ``tasks.deliver``. Every op
that is accepted goes over real HTTP to the bundled fake Track API in strict mode, as a v1
request and (when it fits) as a v2 batch item, and must be applied there as it was sent.
"""

import contextlib
import dataclasses
import enum
import json
import logging
import math
import operator
import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.cache import caches
from django.db import transaction
from django.utils.translation import gettext_lazy
from hypothesis import example, given, settings
from hypothesis import strategies as st

import django_cio
from django_cio import packing, producer, tasks
from django_cio.client import AppClient
from django_cio.conf import get_settings
from django_cio.exceptions import ValidationError
from django_cio.models import DeadLetter, SentMessage
from django_cio.operations import (
    MAX_ATTRIBUTES,
    OPERATIONS,
    AddDevice,
    AnonymousEvent,
    Delete,
    DeleteDevice,
    Event,
    Identify,
    Merge,
    Operation,
    Page,
    SendSms,
    Suppress,
    Unsuppress,
    dumps,
)
from django_cio.registry import registry
from tests.models import Note

# No example database (a failure prints its example), no per-example deadline (a first HTTP
# request opens a connection): the file stays fast through bounded example counts.
PROPERTY = settings(max_examples=150, deadline=None, database=None)
SECRET = "PII-5d1e-never-logged"


# -- strategies -----------------------------------------------------------------------------

class Plan(enum.Enum):
    PRO = "pro"
    ODD = object()  # an enum whose value JSON cannot carry


# Every code point: NUL, controls, lone surrogates, astral characters.
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
# Strings right under, at and over each byte limit (ids, names, values, v2 items, event data),
# in characters of 1 to 4 UTF-8 bytes and in characters that must be refused or quoted.
_UNITS = ["x", "é", "€", "😀", " ", "/", ".", "%", "\x00", "\ud800", "\u3000"]


def _repeat(unit: str, limit: int, delta: int) -> str:
    return unit * max(0, limit // len(unit.encode("utf-8", "surrogatepass")) + delta)


SIZED = st.builds(_repeat, st.sampled_from(_UNITS),
                  st.sampled_from([26, 40, 100, 150, 1000, 32_000, 100_000]), st.integers(-1, 1))
STRINGS = st.one_of(TEXT, SIZED, st.builds(operator.add, TEXT, SIZED))
# What callers mostly send (never blank, never a dot segment).
PLAIN = st.builds(operator.add, st.sampled_from("abcxyz019"), st.text("abcxyz019-_ .@+/",
                                                                      max_size=11))
# Past 64 bits, and past Python's 4,300-digit limit for int <-> str conversions.
HUGE_INTS = st.one_of(
    st.integers(2**63 - 2, 2**64).flatmap(lambda n: st.sampled_from([n, -n])),
    st.builds(lambda exponent, sign: sign * 10**exponent, st.integers(4290, 4400),
              st.sampled_from([1, -1])),
)
INTS = st.one_of(st.integers(), HUGE_INTS)
DECIMALS = st.one_of(
    st.decimals(),  # NaN, sNaN, infinities, any exponent hypothesis likes
    # Integral Decimals so big that int() of them takes seconds: must be refused at once.
    st.sampled_from(["1e18", "1e19", "-1e19", "1e400", "1e1000000", "1e999999999"]).map(Decimal),
)
OTHERS = st.sampled_from([
    object(), Plan.PRO, Plan.ODD, gettext_lazy("Hello"), timedelta(days=1), time(12),
    complex(1, 2), bytearray(b"x"), range(3), Ellipsis,
])
SCALARS = st.one_of(
    st.none(), st.booleans(), INTS, st.floats(), STRINGS, PLAIN, st.binary(max_size=8),
    st.datetimes(timezones=st.none() | st.timezones()), st.dates(), DECIMALS, st.uuids(),
    OTHERS,
)
KEYS = st.one_of(TEXT, PLAIN, SIZED, INTS, st.booleans(), st.none(), st.floats(),
                 st.tuples(st.integers()), st.uuids())


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _cycle() -> dict:
    value: dict = {"name": "loop"}
    value["self"] = value
    return value


# Values known to have hurt, drawn often: ints and Decimals past any limit (int() of
# Decimal("1e999999999") never returns), NaN, NUL, a lone surrogate.
NASTY = st.sampled_from([
    Decimal("1e999999999"), Decimal("-1e1000000"), Decimal("NaN"), 10**5000, -(10**4301), 2**63,
    float("nan"), float("-inf"), "\x00", "a\ud800", b"", "é" * 501,
])
VALUES = st.one_of(
    NASTY,
    st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.tuples(inner, inner),
            st.frozensets(st.integers() | PLAIN, max_size=3),
            st.dictionaries(KEYS, inner, max_size=3),
        ),
        max_leaves=8,
    ),
    st.integers(28, 36).map(_nested),  # around the 32-level limit
    st.builds(_cycle),
)
# Names of attributes and event data, as keyword arguments give them (strings only).
NAMES = st.one_of(TEXT, PLAIN, SIZED, st.sampled_from(["", "email", "created_at", "a.b", "x[0]",
                                                       "<key>", "bio\n", "Ωmega"]))
# Around the 300-attributes limit.
MANY = st.integers(MAX_ATTRIBUTES - 2, MAX_ATTRIBUTES + 2).map(
    lambda count: {f"a{index}": index for index in range(count)})


def keywords(*parameters: str, values: st.SearchStrategy = VALUES) -> st.SearchStrategy:
    """``**attributes`` / ``**data`` of a call: any names but the function's own parameters
    (Python itself refuses those: see ``test_attributes_named_like_parameters``)."""
    names = NAMES.filter(lambda name: name not in parameters)
    return st.one_of(st.dictionaries(names, values, max_size=4),
                     st.dictionaries(PLAIN.filter(lambda name: name not in parameters),
                                     PLAIN | st.integers(0, 99), max_size=3),
                     MANY)


def often(plausible: st.SearchStrategy, anything: st.SearchStrategy,
          weight: int = 2) -> st.SearchStrategy:
    """``plausible`` about ``weight`` times out of ``weight + 1``, else ``anything``: both
    sides get explored. (Not ``one_of``: it flattens nested ``one_of`` branches, even mapped.)"""
    return st.integers(0, weight).flatmap(lambda n: anything if n == weight else plausible)


IDS = often(PLAIN | st.integers(0, 10**9), st.one_of(
    STRINGS, INTS, st.uuids(),
    st.sampled_from([".", "..", "a/b", "%2e%2e", "x+y@example.com", "?q=1#f", "\u3000", " \t",
                     "../customers/other", "ünï©ødé"]),
    st.none(), st.booleans(), st.floats(), st.binary(max_size=4), st.lists(PLAIN, max_size=2),
    st.datetimes(), st.just(gettext_lazy("lazy id")),
))
EVENT_NAMES = often(PLAIN | st.just(gettext_lazy("signed up")), st.one_of(
    STRINGS, st.none(), INTS, st.binary(max_size=4), st.lists(PLAIN, max_size=1)))
URLS = st.one_of(PLAIN.map(lambda path: f"https://shop.example/{path}"), EVENT_NAMES)
# FCM tokens run past the 150-byte id limit; tokens have the 1,000-byte value limit.
TOKENS = st.one_of(IDS, st.builds(_repeat, st.just("f"), st.sampled_from([163, 1000]),
                                  st.integers(-1, 1)))
ID_TYPES = st.one_of(st.sampled_from(["id", "email", "cio_id", "phone", "", None]), STRINGS)
PLATFORMS = often(st.sampled_from(["ios", "android"]),
                  st.one_of(st.sampled_from(["IOS", "windows", ""]), TEXT, st.none(), INTS))
NOTHING = st.just({})

# Public call -> (the op kind it builds, its arguments, the op fields they become).
CALLS: dict[str, tuple[str, st.SearchStrategy, tuple[str, ...]]] = {
    "identify": ("identify", st.tuples(st.tuples(IDS), keywords("person_id")),
                 ("person_id", "attributes")),
    "track": ("event", st.tuples(st.tuples(IDS, EVENT_NAMES), keywords("person_id", "name")),
              ("person_id", "name", "data")),
    "track_anonymous": ("anonymous_event",
                        st.tuples(st.tuples(IDS, EVENT_NAMES),
                                  keywords("anonymous_id", "name")),
                        ("anonymous_id", "name", "data")),
    "page": ("page", st.tuples(st.tuples(IDS, URLS), keywords("person_id", "url")),
             ("person_id", "name", "data")),
    "delete": ("delete", st.tuples(st.tuples(IDS), NOTHING), ("person_id",)),
    "suppress": ("suppress", st.tuples(st.tuples(IDS), NOTHING), ("person_id",)),
    "unsuppress": ("unsuppress", st.tuples(st.tuples(IDS), NOTHING), ("person_id",)),
    "add_device": ("add_device",
                   st.tuples(st.tuples(IDS, TOKENS, PLATFORMS), often(
                       st.dictionaries(PLAIN, PLAIN | st.booleans(), max_size=3),  # strings
                       keywords("person_id", "token", "platform"), weight=1)),
                   ("person_id", "token", "platform", "attributes")),
    "delete_device": ("delete_device", st.tuples(st.tuples(IDS, TOKENS), NOTHING),
                      ("person_id", "token")),
    "merge": ("merge",
              st.tuples(IDS.flatmap(lambda first: st.tuples(st.just(first),
                                                             IDS | st.just(first))), NOTHING),
              ("primary", "secondary")),
}


# -- checks ---------------------------------------------------------------------------------

_PLAIN_LABEL = re.compile(r"[\w \-]{1,40}")
_SEGMENT = re.compile(r"\.([\w \-]{1,40}|<key>)|\[(\d+)\]")


def _label(key: Any) -> str:
    """How an error message may name a mapping key: itself if plainly a name, else <key>."""
    if isinstance(key, int) and not isinstance(key, bool) and abs(key) < 10**40:
        key = str(key)
    return key if isinstance(key, str) and _PLAIN_LABEL.fullmatch(key) else "<key>"


def _resolves(value: Any, path: str) -> bool:
    """Whether ``path`` (".bio", ".tags[2].<key>") leads somewhere inside ``value``."""
    while isinstance(value, enum.Enum):
        value = value.value
    if not path:
        return True
    match = _SEGMENT.match(path)
    if match is None:
        return False
    key, index, rest = *match.groups(), path[match.end():]
    if index is not None:
        items = list(value) if isinstance(value, (list, tuple, set, frozenset)) else []
        return int(index) < len(items) and _resolves(items[int(index)], rest)
    return isinstance(value, Mapping) and any(
        _resolves(item, rest) for name, item in value.items() if _label(name) == key)


def assert_names_the_field(error: ValidationError, kind: str, given: dict[str, Any]) -> None:
    """The error is about this call's op, and its field is one of the values given (or a path
    into one of them), as the message says first."""
    assert error.kind == kind, error
    assert str(error).startswith(f"{kind}: {error.field} "), error
    root = re.match(r"[a-z_]+", error.field)
    assert root is not None and root.group() in given, error
    assert _resolves(given[root.group()], error.field[root.end():]), error


def wire(value: Any) -> Any:
    return json.loads(dumps(value))


def assert_taken_by_the_server(fake, client, op: Operation) -> None:
    """Send ``op`` as v1 and, if it fits, as a v2 batch item; strict mode takes and applies
    both (a 400 raises ``PermanentError``; a 207 refusal comes back as an ``OpError``)."""
    fake.store.reset()
    if op.api == "app":  # a transactional message: the App API, kept as it was sent
        answer = AppClient(fake.app_api_key, url=fake.url).send_message(op)
        assert fake.store.messages == [{"channel": op.channel, **answer, "body": wire(op.body())}]
        return
    client.send(op)
    sent = 1
    if op.fits_v2():
        assert client.send_batch([op]) == []
        sent += 1
    store = fake.store
    assert [request["status"] for request in store.requests] == [200] * sent
    # The id arrived as quoted, unresolved (the query string is not part of the path).
    assert store.requests[0]["path"] == op.single().path.split("?")[0]
    # It reached the server and was applied (an anonymous page view as a page).
    action = op.type if isinstance(op, AnonymousEvent) else op.action
    if not op.batchable:
        action = {"add_to_segment": "segment_add_customers",
                  "remove_from_segment": "segment_remove_customers"}.get(op.kind, action)
    elif op.v2()["type"] == "object":
        action = f"object_{action}"
    assert store.ops == Counter({action: sent})
    if op.id_types != {"id"}:
        return  # the fake keeps people by email and cio_id apart (tests/test_identifiers.py)
    if isinstance(op, Identify):
        assert store.people == {op.person_id: wire(op.attributes)}
    elif isinstance(op, (Event, AnonymousEvent)):
        (event,) = store.events  # the second copy has the same id: dropped as a repeat
        assert (event["name"], event["id"], event["data"]) == (op.name, op.id, wire(op.data))
        assert event["timestamp"] == op.timestamp and store.duplicate_event_ids == sent - 1
        who = "anonymous_id" if isinstance(op, AnonymousEvent) else "person"
        assert event[who] == op.person_id
    elif isinstance(op, AddDevice):
        assert store.devices[op.person_id][op.token]["platform"] == op.platform
    elif isinstance(op, Merge):
        assert store.merges == [(op.primary, op.secondary)] * sent
    elif isinstance(op, Suppress):
        assert store.suppressed == {op.person_id}


# -- 1. the public API ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_public_call_is_accepted_by_strict_mode_or_refused_naming_the_field(
    name, fake, track_client
):
    kind, arguments, fields = CALLS[name]
    outcomes: Counter[str] = Counter()

    @PROPERTY
    @given(call=arguments)
    def check(call):
        args, kwargs = call
        try:
            with producer.collect() as queued:  # what the call queues, instead of a broker
                getattr(django_cio, name)(*args, **kwargs)
        except ValidationError as error:
            assert_names_the_field(error, kind, dict(zip(fields, (*args, kwargs))))
            outcomes["refused"] += 1
            return
        (op,) = queued
        assert op.kind == kind
        assert_taken_by_the_server(fake, track_client, op)
        outcomes["accepted"] += 1

    check()
    assert outcomes["accepted"] and outcomes["refused"], outcomes  # both sides were explored


@pytest.mark.parametrize("cls", sorted(OPERATIONS.values(), key=lambda cls: cls.kind),
                         ids=lambda cls: cls.kind)
def test_an_operation_built_from_any_fields_is_valid_or_refused_naming_the_field(
    cls, fake, track_client
):
    """The op classes take what the public calls cannot pass: event ids, timestamps, device
    ``last_used``, an anonymous event's type, and any Python value for any field."""
    fields = tuple(field.name for field in dataclasses.fields(cls))
    required = {field.name for field in dataclasses.fields(cls)
                if field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING}
    timestamps = st.one_of(st.integers(-5, 10**11 + 5), INTS, st.floats(), st.datetimes(),
                           st.dates(), st.booleans(), STRINGS, st.none())
    event_ids = st.one_of(st.builds(lambda: Event("1", "x").id),
                          st.builds(lambda: Event("1", "x").id.lower()),
                          st.sampled_from(["8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "0" * 25,
                                           "O" * 26, "é" * 26]),
                          STRINGS, INTS, st.none(), st.binary(max_size=26))
    mappings = st.one_of(keywords(), st.dictionaries(KEYS, VALUES, max_size=3), VALUES)
    wild = {
        "person_id": IDS, "anonymous_id": IDS, "primary": IDS, "secondary": IDS,
        "token": TOKENS, "platform": PLATFORMS, "name": EVENT_NAMES if cls is not Page else URLS,
        "attributes": mappings, "data": mappings, "id": event_ids, "timestamp": timestamps,
        "last_used": timestamps, "type": st.sampled_from(["event", "page", "screen", "", None]),
        "workspace": st.one_of(st.none(), STRINGS, INTS), "to": st.one_of(STRINGS, INTS),
        "id_type": ID_TYPES, "primary_type": ID_TYPES, "secondary_type": ID_TYPES,
        "object_type_id": st.one_of(INTS, STRINGS, st.floats(), st.booleans(), st.none()),
        "object_id": IDS, "segment_id": st.one_of(INTS, STRINGS, st.none(), st.booleans()),
        "person_ids": st.one_of(st.lists(IDS, max_size=3), STRINGS, st.none(), VALUES),
        "transactional_message_id": st.one_of(INTS, STRINGS, st.none(), st.booleans()),
        "message_data": mappings, "fields": mappings,
    }
    moments = st.one_of(st.integers(0, 10**11 - 1), st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(5000, 1, 1)))
    valid = {
        "person_id": PLAIN, "anonymous_id": PLAIN, "primary": PLAIN, "secondary": PLAIN,
        "token": PLAIN, "platform": st.sampled_from(["ios", "android"]), "name": PLAIN,
        "attributes": st.dictionaries(PLAIN, PLAIN | st.booleans(), max_size=3),
        "data": st.dictionaries(PLAIN, PLAIN | st.integers() | st.floats(), max_size=3),
        "id": st.builds(lambda: Event("1", "x").id), "timestamp": moments, "last_used": moments,
        "type": st.sampled_from(["event", "page"]),
        "workspace": st.sampled_from([None, "default", "eu"]), "to": st.sampled_from(["eu"]),
        "id_type": st.just("id"), "primary_type": st.just("id"), "secondary_type": st.just("id"),
        "object_type_id": st.integers(1, 99) | st.sampled_from(["1", "07"]),
        "object_id": PLAIN, "segment_id": st.integers(1, 10**6),
        "person_ids": st.lists(PLAIN, min_size=1, max_size=4),
        "transactional_message_id": st.integers(1, 99) | PLAIN,
        "message_data": st.dictionaries(PLAIN, PLAIN | st.integers(), max_size=3),
        "fields": st.just({"to": "+33612345678" if cls is SendSms else "a@example.com"}),
    }
    # Mostly plausible values, so that both sides are explored: each field is wild a third
    # of the time; the required fields are left out now and then.
    per_field = {field: often(valid[field], wild[field]) for field in fields}
    optional = {field: per_field[field] for field in fields if field not in required}
    complete = st.fixed_dictionaries({field: per_field[field] for field in required},
                                     optional=optional)
    # And some wholly plausible: with many fields, "each wild a third of the time" alone left
    # no valid op in a whole run now and then (send_sms: 111 refused, 0 accepted, in CI).
    plausible = st.fixed_dictionaries({field: valid[field] for field in required},
                                      optional={field: valid[field] for field in optional})
    outcomes: Counter[str] = Counter()

    @PROPERTY
    @given(values=st.one_of(complete, complete, plausible,
                            st.fixed_dictionaries({}, optional=per_field)))
    def check(values):
        try:
            op = cls(**values)
        except TypeError:  # a required field left out: Python's own error, before ours
            assert not required <= set(values)
            return
        except ValidationError as error:
            assert_names_the_field(error, cls.kind, {**dict.fromkeys(fields), **values})
            outcomes["refused"] += 1
            return
        assert Operation.from_dict(json.loads(dumps(op.to_dict()))) == op  # a broker trip
        assert_taken_by_the_server(fake, track_client, op)
        outcomes["accepted"] += 1

    check()
    assert outcomes["accepted"] and outcomes["refused"], outcomes


# -- 2. the registry ------------------------------------------------------------------------

@pytest.fixture
def generated():
    """Note registered as people (deleted with their rows) and with an event on every save;
    the person ids, attributes, event name and data are whatever the test puts in ``given``."""
    customers = dict(registry.customers)
    events = {model: list(model_events) for model, model_events in registry.events.items()}
    given: dict[str, Any] = {}

    @django_cio.register(Note)
    class Generated(django_cio.Customer):
        delete_on_model_delete = True

        def person_id(self, note):
            return given["person_id"]

        def get_attributes(self, note):
            attributes = given["attributes"]
            return dict(attributes) if isinstance(attributes, dict) else attributes

    django_cio.register_event(Note, name="noted", person=lambda note: given["event_person"],
                              data=lambda note: given["event_data"], on=lambda *_: True)
    (given["event"],) = registry.events[Note]
    yield given
    registry.unregister(Note)
    registry.customers, registry.events = customers, events


# "<model> <registration> not sent (<reason>)", the reason a ValidationError's op and field,
# else an exception's type (and the attribute a missing-attribute error names).
_NOT_SENT = re.compile(r"customerio: tests\.Note (identify \(\w+\)|event .*|delete \(\w+\)) "
                       r"not sent \(((?P<kind>identify|event|delete): [a-z_]+\b.*"
                       r"|[A-Za-z]+Error(: no attribute '\w+')?)\)")


@pytest.mark.django_db(transaction=True)
def test_a_registered_model_save_never_raises_and_what_it_sends_strict_mode_takes(
    generated, fake, track_client, caplog
):
    outcomes: Counter[str] = Counter()
    mappings = st.one_of(keywords(), st.dictionaries(KEYS, VALUES, max_size=4), st.none(),
                         st.lists(PLAIN, max_size=2), PLAIN, st.integers())

    @PROPERTY
    @given(person_id=IDS, attributes=mappings, event_name=EVENT_NAMES, event_person=IDS,
           event_data=mappings, with_secret=st.booleans(), in_transaction=st.booleans(),
           update=st.booleans(), delete=st.booleans())
    def check(person_id, attributes, event_name, event_person, event_data, with_secret,
              in_transaction, update, delete):
        if with_secret:  # a value that must not reach the logs
            attributes = {**attributes, "secret": SECRET} if isinstance(attributes,
                                                                         dict) else attributes
            event_data = {**event_data, "secret": SECRET} if isinstance(event_data,
                                                                         dict) else event_data
        generated.update(person_id=person_id, attributes=attributes, event_person=event_person,
                         event_data=event_data)
        generated["event"].name = event_name
        with producer.collect() as queued:  # nothing reaches the broker
            note = Note.objects.create(text="first") if update else None
            queued.clear()
            caplog.clear()
            with caplog.at_level(logging.ERROR, "django_cio"), (
                transaction.atomic() if in_transaction else contextlib.nullcontext()
            ):
                # None of these may raise, whatever the registration gives.
                if note is None:
                    note = Note.objects.create(text="hello")
                else:
                    note.text = "changed"
                    note.save()
                if delete:
                    note.delete()
        assert SECRET not in caplog.text
        # Each op the rows made is queued, or logged as not sent (the kind and field of a
        # ValidationError, else only the exception's type) and skipped.
        made = Counter({"identify": 1, "event": 1, "delete": int(delete)})
        skipped = Counter()
        for record in caplog.records:
            match = _NOT_SENT.fullmatch(record.getMessage())
            assert match, record.getMessage()
            skipped[match["kind"] or "identify"] += 1  # only get_attributes gives non-dicts
        assert Counter(op.kind for op in queued) + skipped == made
        for op in queued:
            if isinstance(op, Identify):
                assert op.person_id == str(person_id)
                # created_at comes with a new row, unless get_attributes gave one
                assert ("created_at" in op.attributes) == (
                    not update or "created_at" in attributes)
            assert_taken_by_the_server(fake, track_client, op)
        outcomes.update(sent=len(queued), skipped=sum(skipped.values()))

    check()
    assert outcomes["sent"] and outcomes["skipped"], outcomes


# -- 3. task messages -----------------------------------------------------------------------

# What a broker message can hold (JSON) and a dead letter can store as it is. NUL characters,
# lone surrogates and NaN are JSON too, and are stored as text: see the test below.
STORABLE_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                        max_size=10)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), HUGE_INTS.filter(lambda n: abs(n) < 10**300),
              st.floats(allow_nan=False, allow_infinity=False), STORABLE_TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STORABLE_TEXT, inner,
                                                                  max_size=3),
    max_leaves=6,
)
_SAMPLES = [
    lambda n: Identify(f"p{n}", {"email": f"p{n}@example.com"}),
    lambda n: Event(f"p{n}", "signed_up", {"plan": "pro"}),
    lambda n: Page(f"p{n}", "https://shop.example/cart"),
    lambda n: AnonymousEvent(f"anon-{n}", "viewed"),
    lambda n: Delete(f"p{n}"),
    lambda n: Suppress(f"p{n}"),
    lambda n: Unsuppress(f"p{n}"),
    lambda n: AddDevice(f"p{n}", f"tok-{n}", "ios", last_used=1_700_000_000),
    lambda n: DeleteDevice(f"p{n}", f"tok-{n}"),
    lambda n: Merge(f"p{n}", f"q{n}"),
]
_FIELDS = sorted({field.name for cls in OPERATIONS.values() for field in dataclasses.fields(cls)}
                 | {"kind", "colour"})
_MISSING = object()


def _mutated(op: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    op = dict(op)
    if value is _MISSING:
        op.pop(field, None)
    else:
        op[field] = value
    return op


VALID_OPS = st.builds(lambda build, n: build(n).to_dict(), st.sampled_from(_SAMPLES),
                      st.integers(0, 10**6))
RAW_OPS = st.one_of(
    VALID_OPS,
    JSON,  # not an op at all, or a mapping without a kind
    st.fixed_dictionaries({"kind": st.one_of(JSON, st.sampled_from(sorted(OPERATIONS)))}),
    st.builds(_mutated, VALID_OPS, st.sampled_from(_FIELDS), JSON | st.just(_MISSING)),
)
MAX_STORED_FAILURES = 2**31 - 2  # DeadLetter.attempts (failures + 1) is a 32-bit column
# A count that dead letters can store; past it, see the test below.
FAILURES = st.one_of(st.integers(0, 5), JSON.filter(lambda count: not (
    type(count) is int and count > MAX_STORED_FAILURES)))


def _same_json(stored: Any, sent: Any) -> bool:
    """Equal, but for floats that came back from PostgreSQL's jsonb (a decimal) a bit off."""
    if isinstance(stored, bool) or isinstance(sent, bool):
        return stored is sent
    if isinstance(stored, (int, float)) and isinstance(sent, (int, float)):
        return stored == sent or math.isclose(stored, sent, rel_tol=1e-12)
    if isinstance(stored, list) and isinstance(sent, list):
        return len(stored) == len(sent) and all(map(_same_json, stored, sent))
    if isinstance(stored, dict) and isinstance(sent, dict):
        return stored.keys() == sent.keys() and all(_same_json(stored[k], sent[k]) for k in sent)
    return type(stored) is type(sent) and stored == sent


@pytest.mark.django_db(transaction=True)
def test_malformed_task_messages_become_dead_letters_and_the_rest_is_delivered(
    cio_fake, published
):
    outcomes: Counter[str] = Counter()

    @PROPERTY
    @given(raw=st.lists(RAW_OPS, max_size=6), failures=FAILURES, unwrapped=st.booleans())
    # Found in CI: an op of a workspace the settings lack (a valid name); a message op beside
    # a Track op (each to its own API).
    @example(raw=[{**Identify("p", {}).to_dict(), "workspace": "0"}], failures=0,
             unwrapped=False)
    @example(raw=[SendSms("p", 7, fields={"to": "+33612345678"}).to_dict(),
                  Event("p", "x").to_dict()], failures=0, unwrapped=False)
    def check(raw, failures, unwrapped):
        raw = json.loads(json.dumps(raw))  # as the broker hands it over
        good, bad = [], []  # bad: (the op as a dead letter keeps it, the reason it gets)
        sends: set[str] = set()
        for item in raw:
            try:
                op = Operation.from_dict(item)  # anything but ValidationError fails
            except ValidationError:
                bad.append((item if isinstance(item, dict) else {"raw": item}, "malformed: "))
                continue
            if (op.workspace or "default") not in get_settings().workspace_names:
                bad.append((item, "unknown workspace"))
            elif op.api == "app":  # a transactional message: to the App API, once per id
                sends.add(op.id)
            else:
                good.append(op)
        DeadLetter.objects.all().delete()
        SentMessage.objects.all().delete()  # an id an earlier example sent is sent again
        cio_fake.store.reset()
        published.clear()
        caches["default"].delete_pattern("django_cio:*")  # no identify remembered as sent
        # One op alone may come as the message itself rather than a list of one.
        message = raw[0] if unwrapped and len(raw) == 1 and not isinstance(raw[0], list) else raw
        result = tasks.deliver.apply(args=(message,), kwargs={"failures": failures})
        assert result.successful(), result.result
        letters = list(DeadLetter.objects.order_by("id"))
        unmatched = list(letters)  # each expected dead letter, in any order
        for item, reason in bad:
            match = next((letter for letter in unmatched if _same_json(letter.op, item)
                          and letter.reason.startswith(reason)), None)
            assert match is not None, (item, reason, [(lt.op, lt.reason) for lt in letters])
            unmatched.remove(match)
        assert not unmatched
        counted = failures if type(failures) is int and failures >= 0 else 0  # else none
        assert all(letter.attempts == counted + 1 for letter in letters)
        store = cio_fake.store
        assert set(store.statuses) <= {200}  # no 400, no 207
        assert sum(store.ops.values()) == len(packing.collapse(good))  # every good op arrived
        assert len(store.messages) == len(sends)  # every message once
        assert published == []  # nothing was left to retry
        outcomes["dead letters"] += len(bad)
        outcomes["delivered"] += len(good) + len(sends)

    check()
    assert outcomes["dead letters"] and outcomes["delivered"], outcomes


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("bad", "failures"), [
    ({"kind": "identify", "person_id": "a\x00"}, 0),
    ({"kind": "identify", "person_id": "\ud800"}, 0),
    ({"kind": "identify", "person_id": "1", "attributes": {"x": float("nan")}}, 0),
    ({"kind": "nul\x00"}, 0),
    ("\x00", 0),
    ({"kind": "teleport"}, MAX_STORED_FAILURES + 1),
], ids=["nul", "surrogate", "nan", "nul-kind", "nul-string", "huge-failure-count"])
def test_unstorable_malformed_messages_become_dead_letters_too(cio_fake, published, bad,
                                                               failures):
    raw = json.loads(json.dumps([bad, Identify("u1", {}).to_dict()]))  # JSON carries them all
    result = tasks.deliver.apply(args=(raw,), kwargs={"failures": failures})
    assert result.successful() and list(cio_fake.store.people) == ["u1"]
    assert DeadLetter.objects.count() == 1 and published == []


def test_attributes_named_like_parameters():
    with producer.collect() as queued:
        django_cio.identify("42", person_id="legacy-7")
        django_cio.track("42", "signed_up", name="Ada")
    assert [op.kind for op in queued] == ["identify", "event"]
