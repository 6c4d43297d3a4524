"""Registered models, as a project's own tests would see them (locmem backend)."""

import logging
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import transaction

import django_cio
from django_cio.exceptions import ConfigurationError
from django_cio.registry import registry
from tests.models import Member, Note, Order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def users(registrations):
    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["email", "first_name"]
        delete_on_model_delete = True

        def should_track(self, user):
            return user.is_active

    return UserCustomer


def sent(outbox):
    return [(op.kind, op.person_id, getattr(op, "attributes", getattr(op, "name", None)))
            for op in outbox]


def test_a_new_row_is_identified_with_created_at_after_commit(users, cio_outbox):
    with transaction.atomic():
        user = User.objects.create(username="ada", email="ada@example.com", first_name="Ada")
        assert cio_outbox == []
    (op,) = cio_outbox
    assert (op.kind, op.person_id) == ("identify", str(user.pk))
    assert op.attributes["email"] == "ada@example.com" and "created_at" in op.attributes


def test_an_update_is_identified_without_created_at(users, cio_outbox):
    user = User.objects.create(username="ada", email="ada@example.com")
    cio_outbox.clear()
    user.first_name = "Ada"
    user.save()
    assert sent(cio_outbox) == [("identify", str(user.pk),
                                 {"email": "ada@example.com", "first_name": "Ada"})]


def test_update_fields_that_touch_no_tracked_field_send_nothing(users, cio_outbox):
    user = User.objects.create(username="ada", email="ada@example.com")
    cio_outbox.clear()
    user.save(update_fields=["last_login"])
    assert cio_outbox == []
    user.save(update_fields=["email", "last_login"])
    assert len(cio_outbox) == 1


def test_should_track_false_sends_nothing(users, cio_outbox):
    User.objects.create(username="bot", is_active=False)
    assert cio_outbox == []


def test_a_rolled_back_save_sends_nothing(users, cio_outbox):
    with pytest.raises(RuntimeError), transaction.atomic():
        User.objects.create(username="ada")
        raise RuntimeError
    assert cio_outbox == []


def test_delete_on_model_delete(users, cio_outbox):
    user = User.objects.create(username="ada")
    pk = str(user.pk)
    user.delete()
    assert sent(cio_outbox)[-1] == ("delete", pk, None)


def test_an_unregistered_model_sends_nothing(cio_outbox):
    Note.objects.create(text="hello")
    assert cio_outbox == []


def test_a_proxy_uses_its_concrete_models_registration_unless_it_has_its_own(users, cio_outbox):
    Member.objects.create(username="via-proxy", email="p@example.com")
    assert [op.kind for op in cio_outbox] == ["identify"]

    @django_cio.register(Member)
    class MemberCustomer(django_cio.Customer):
        fields = ["username"]

    cio_outbox.clear()
    member = Member.objects.create(username="member")
    assert sent(cio_outbox)[0][2].keys() == {"username", "created_at"}
    assert member.pk


def test_registration_errors_are_clear(registrations):
    with pytest.raises(ConfigurationError, match="abstract"):
        django_cio.register_event(__import__("tests.models").models.Timestamped, name="x",
                                  person="pk")
    with pytest.raises(ConfigurationError, match="registers Django models"):
        django_cio.register(object)(django_cio.Customer)

    @django_cio.register(Note)
    class NoteCustomer(django_cio.Customer):
        fields = ["text"]

    with pytest.raises(ConfigurationError, match="registered with django_cio twice"):
        django_cio.register(Note)(NoteCustomer)
    registry.unregister(Note)
    with pytest.raises(ConfigurationError, match="does not have: colour"):
        @django_cio.register(Note)
        class Bad(django_cio.Customer):
            fields = ["text", "colour"]
    # register_event: a typo in person or data fails here, naming model and event, not at
    # every save with "not sent (AttributeError)".
    with pytest.raises(ConfigurationError, match=r"register_event\(tests.Note, name='noted'\) "
                                                 r"names what the model does not have: usr_id"):
        django_cio.register_event(Note, name="noted", person="usr_id", data=["text"])
    with pytest.raises(ConfigurationError, match="does not have: totl"):
        django_cio.register_event(Note, name="noted", person="pk", data=["text", "totl"])
    assert Note not in registry.events


def test_an_invalid_row_is_logged_and_the_save_goes_on(registrations, cio_outbox, caplog):
    @django_cio.register(Note)
    class NoteCustomer(django_cio.Customer):
        fields = ["text"]

    with caplog.at_level(logging.ERROR, "django_cio"):
        note = Note.objects.create(text="secret " * 300)  # over 1,000 bytes
    assert note.pk and cio_outbox == []
    assert "attributes.text" in caplog.text and "secret" not in caplog.text


def test_autodiscovered_model_event_on_create_only(cio_outbox):
    user = User.objects.create(username="shopper")
    order = Order.objects.create(user=user, total=Decimal("9.50"))
    order.status = "paid"
    order.save()
    assert sent(cio_outbox) == [("event", str(user.pk), "order_placed")]
    assert cio_outbox[0].data == {"total": 9.5}


def test_events_on_update_or_a_callable(registrations, cio_outbox):
    django_cio.register_event(Order, name="order_changed", person=lambda o: o.user.username,
                              on="update", data=lambda o: {"status": o.status})
    django_cio.register_event(Order, name="order_paid", person="user_id",
                              on=lambda order, created: order.status == "paid")
    user = User.objects.create(username="shopper")
    order = Order.objects.create(user=user, total=5)
    cio_outbox.clear()
    order.status = "paid"
    order.save()
    assert set(sent(cio_outbox)) == {("event", "shopper", "order_changed"),
                                     ("event", str(user.pk), "order_paid")}


def test_identify_many_covers_bulk_create(users, cio_outbox):
    User.objects.bulk_create([User(username=f"u{n}", email=f"u{n}@example.com")
                              for n in range(25)])
    assert cio_outbox == []  # bulk_create fires no signals
    assert django_cio.identify_many(User.objects.order_by("pk"), chunk=10) == 25
    assert [op.kind for op in cio_outbox] == ["identify"] * 25


def test_a_failing_customer_method_never_breaks_the_save(registrations, cio_outbox, caplog):
    @django_cio.register(Note)
    class Broken(django_cio.Customer):
        def person_id(self, note):
            raise IndexError("secret")

    django_cio.register_event(Note, name="noted", person=lambda note: note.missing)
    note = Note.objects.create(text="hello")
    assert note.pk and cio_outbox == []
    # Each log names the model, the registration and the field, never a value.
    assert "tests.Note identify (Broken) not sent (IndexError)" in caplog.text
    assert ("tests.Note event 'noted' not sent (AttributeError: no attribute 'missing')"
            in caplog.text)
    assert "secret" not in caplog.text


def test_update_fields_with_get_attributes_overridden_always_send(registrations, cio_outbox):
    @django_cio.register(Note)
    class Computed(django_cio.Customer):
        def get_attributes(self, note):
            return {"length": len(note.text)}

    note = Note.objects.create(text="hello")
    cio_outbox.clear()
    note.text = "hello there"
    note.save(update_fields=["text"])
    assert [op.attributes for op in cio_outbox] == [{"length": 11}]


def test_deletes_stay_fast_for_models_nobody_registered(users):
    from django.db.models.signals import post_delete

    assert post_delete.has_listeners(User) and post_delete.has_listeners(Member)
    assert not post_delete.has_listeners(Note)


def test_field_values_are_sent_as_the_field_s_type_however_the_row_was_made(registrations,
                                                                             cio_outbox):
    # A row made with a string for a decimal sends a number, as one read back would.
    django_cio.register_event(Order, name="paid", person="user_id", data=["total"])
    user = User.objects.create(username="ada")
    Order.objects.create(user=user, total="9.50")
    Order.objects.create(user=user, total=Decimal("9.50"))
    assert [op.data for op in cio_outbox if op.name == "paid"] == [{"total": 9.5}] * 2


def test_event_data_given_as_a_string_is_a_start_up_error(registrations):
    with pytest.raises(ConfigurationError, match="data must be a list of field names"):
        django_cio.register_event(Order, name="paid", person="user_id", data="total")


def test_a_create_event_s_id_is_its_row_s_for_proxies_and_each_person(registrations,
                                                                      cio_outbox):
    """Found by an attack: a save through a proxy hashed the proxy's label (the backfill of the
    concrete model sent the event again under another id), and two registrations of one
    name (buyer and seller) shared an id, so Customer.io dropped the second."""
    from django_cio.backfill.rows import row_ops
    from tests.models import Order, RushOrder

    django_cio.register_event(Order, name="ordered", person="user_id", timestamp="placed_at")
    django_cio.register_event(Order, name="ordered", person=lambda o: f"seller-{o.user_id}",
                              timestamp="placed_at")
    ada = User.objects.create(username="ada")
    cio_outbox.clear()
    rush = RushOrder.objects.create(user=ada, total=4)
    live = [op for op in cio_outbox if op.kind == "event" and op.name == "ordered"]
    backfilled = [op for op in row_ops(Order.objects.get(pk=rush.pk)) if op.kind == "event"]
    assert [op.id for op in live] == [op.id for op in backfilled]
    assert len({op.id for op in live}) == 2
