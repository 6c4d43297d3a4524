"""Objects, relationships, segments and people by email through the real delivery path, into
the strict fake (Customer.io's request schemas applied)."""

import pytest
from django.db import transaction

from django_cio import Person
from django_cio.models import DeadLetter
from django_cio.operations import (
    AddRelationship,
    AddToSegment,
    DeleteObject,
    Event,
    Identify,
    IdentifyObject,
    RemoveFromSegment,
    Screen,
)
from tests.integration.test_tasks import deliver

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "one-by-one"])
def test_every_new_kind_is_taken_with_batch_on_or_off(settings, cio_fake, batch):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "BATCH": batch}
    ada = Person(email="ada@example.com")
    deliver(Identify(ada, {"plan": "pro"}), Identify("42", {}),
            IdentifyObject(1, "acme", {"name": "Acme"}), IdentifyObject(1, "gone"),
            AddRelationship(ada, 1, "acme", {"role": "admin"}), AddRelationship("42", 1, "gone"),
            DeleteObject(1, "gone"), Screen(ada, "Cart"), Event("ada@example.com", "odd id"),
            AddToSegment(7, ["42"]), AddToSegment(8, [ada, Person(email="x@example.com")]),
            RemoveFromSegment(7, ["42"]))
    store = cio_fake.store
    assert not DeadLetter.objects.exists()
    assert set(store.statuses) == {200}
    ada_key = store.emails["ada@example.com"]
    assert store.objects == {("1", "acme"): {"name": "Acme"}}
    assert store.relationships == {(ada_key, "1", "acme"): {"role": "admin"}}
    assert {key: sorted(people) for key, people in store.segments.items()} == {7: [], 8: [
        ada_key]}  # x@example.com is no one yet: Customer.io ignores unknown people
    assert [(event["person"], event["type"]) for event in store.events] == [
        (ada_key, "screen"), ("ada@example.com", "event")]


def test_a_company_and_its_people_reach_customerio_through_a_worker(worker, companies,
                                                                    wait_for):
    from tests.models import Company, Employee

    fake = worker.cio_fake
    with transaction.atomic():
        acme = Company.objects.create(name="Acme")
        Employee.objects.create(email="ada@example.com", company=acme, role="admin")
    wait_for(lambda: fake.store.relationships)
    ada = fake.store.emails["ada@example.com"]
    assert fake.store.people[ada].items() >= {"email": "ada@example.com", "role": "admin"}.items()
    assert fake.store.objects == {("1", str(acme.pk)): {"name": "Acme", "plan": "free"}}
    assert fake.store.relationships == {(ada, "1", str(acme.pk)): {"role": "admin"}}
