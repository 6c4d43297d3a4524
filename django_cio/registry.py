"""Models registered for Customer.io, admin-style, and the signals that turn saves into ops.

In an app's ``customerio.py`` (found by ``autodiscover`` when Django starts)::

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["email", "first_name", "date_joined"]
        def should_track(self, user): return user.is_active

    django_cio.register_event(Order, name="order_placed", person=lambda o: o.user_id)

A save of a registered model identifies the person after the transaction commits (with
``created_at`` when the row is new); a delete deletes them if ``delete_on_model_delete``.
Signal handlers never break the save that fired them: an op that fails validation is logged
(kind and field, no value) and skipped. ``bulk_create`` and ``QuerySet.update`` fire no
signals: use ``identify_many``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from .exceptions import ConfigurationError
from .operations import Delete, Event, Identify, Operation, Person
from .operations.values import check_timestamp, row_event_id
from .privacy import safe_reason
from .producer import batch, enqueue
from .routing import route

logger = logging.getLogger("django_cio")


class Customer:
    """How rows of a model become Customer.io people. Subclass and ``register`` it."""

    fields: ClassVar[Sequence[str]] = ()
    delete_on_model_delete: ClassVar[bool] = False
    since_field: ClassVar[str | None] = None  # what cio_backfill --since filters on

    def person_id(self, instance: Any) -> str | Person:
        """Who the row is in Customer.io: by id, the primary key as a string. Return
        ``Person(email=instance.email)`` (or ``Person(cio_id=...)``) to name people by that
        identifier instead."""
        return str(instance.pk)

    def get_attributes(self, instance: Any) -> dict[str, Any]:
        """The person's attributes: the ``fields``, by name. Override to add or change."""
        return {name: field_value(instance, name) for name in self.fields}

    def should_track(self, instance: Any) -> bool:
        """Whether this row is sent at all (``False`` sends nothing for it)."""
        return True

    def workspace(self, instance: Any) -> str | None:
        """The workspace this person's ops go to (a name in ``CUSTOMERIO["WORKSPACES"]``,
        e.g. from a ``data_region`` field); None leaves it to ``ROUTER``, else ``default``."""
        return None

    def relationships(self, instance: Any) -> Iterable[Any]:
        """The objects this person belongs to, sent as relationships after each identify:
        rows of models registered with ``register_object``, or ``(row, {attributes})``
        pairs. Saving sends what is there now; an ended one needs
        ``django_cio.delete_relationship``."""
        return ()


def field_value(instance: Any, name: str) -> Any:
    """``instance.name`` as its model field's type: a row made with ``total="9.50"`` sends the
    number 9.5, like one read back from the database (anything but a field: as it is)."""
    value = getattr(instance, name)
    try:
        field = instance._meta.get_field(name)
    except (AttributeError, FieldDoesNotExist):
        return value
    if not field.concrete or field.is_relation:
        return value
    return field.to_python(value)


class ModelEvent:
    """An event sent when rows of a model are saved (see ``register_event``)."""

    def __init__(self, name: str, person: Callable[[Any], Any] | str,
                 on: str | Callable[[Any, bool], bool],
                 data: Callable[[Any], dict[str, Any]] | Sequence[str] | None,
                 workspace: Callable[[Any], str | None] | None = None,
                 timestamp: str | Callable[[Any], Any] | None = None) -> None:
        if not (callable(on) or on in ("create", "update")):
            raise ConfigurationError(
                f"register_event(on=...) must be 'create', 'update' or a callable, got {on!r}"
            )
        self.name, self.person, self.on, self.data = name, person, on, data
        self.workspace, self.timestamp = workspace, timestamp
        # How logs name it; a name that is not a string is reported when an op is made.
        self.label = f"event {name[:100]!r}" if isinstance(name, str) else "event <not a string>"

    def fires(self, instance: Any, created: bool) -> bool:
        if callable(self.on):
            return bool(self.on(instance, created))
        return created if self.on == "create" else not created

    def op(self, instance: Any) -> Event:
        person = self.person(instance) if callable(self.person) else getattr(instance,
                                                                               self.person)
        if callable(self.data):
            data = self.data(instance)
        else:
            data = {name: field_value(instance, name) for name in (self.data or ())}
        workspace = self.workspace(instance) if self.workspace else None
        return Event(person, self.name, data, workspace=workspace,
                     **self.when(instance, person))

    @property
    def once_per_row(self) -> bool:
        """Sent when a row is created, at the row's own time: the event a backfill can send
        again, with the same id."""
        return self.on == "create" and self.timestamp is not None

    def when(self, instance: Any, person: Any) -> dict[str, Any]:
        """The event's time and, once per row, its id (see ``row_event_id``): the same for a
        save through a proxy as for the backfill of the concrete model, and one per person
        (an order's buyer and seller each get their "ordered")."""
        if self.timestamp is None:
            return {}
        moment = (self.timestamp(instance) if callable(self.timestamp)
                  else getattr(instance, self.timestamp))
        seconds = check_timestamp(self.label, "timestamp", moment)
        if not self.once_per_row:
            return {"timestamp": seconds}
        who = (person.type, person.value) if isinstance(person, Person) else ("id", person)
        row = (instance._meta.concrete_model._meta.label_lower, instance.pk, self.name,
               seconds, *who)
        return {"timestamp": seconds, "id": row_event_id(seconds, *row)}


class Registry:
    def __init__(self) -> None:
        self.customers: dict[type[models.Model], Customer] = {}
        self.events: dict[type[models.Model], list[ModelEvent]] = {}

    def add_customer(self, model: type[models.Model], customer: Customer) -> None:
        check_model(model)
        if model in self.customers:
            raise ConfigurationError(
                f"{model._meta.label} is registered with django_cio twice "
                f"({type(self.customers[model]).__name__} and {type(customer).__name__})"
            )
        unknown = [name for name in customer.fields if not has_attribute(model, name)]
        if unknown:
            raise ConfigurationError(
                f"{type(customer).__name__}.fields names what {model._meta.label} does not "
                f"have: {', '.join(unknown)}"
            )
        self.customers[model] = customer
        for sender in with_proxies(model):
            post_delete.connect(_on_delete, sender=sender,
                                dispatch_uid=f"django_cio.delete.{sender._meta.label}")

    def unregister(self, model: type[models.Model]) -> None:
        """Forget a model's person registration and events (tests, apps that override)."""
        self.customers.pop(model, None)
        self.events.pop(model, None)
        for sender in with_proxies(model):
            post_delete.disconnect(sender=sender,
                                   dispatch_uid=f"django_cio.delete.{sender._meta.label}")

    def customer_for(self, model: type[models.Model]) -> Customer | None:
        """A model's own registration, else its concrete model's (proxies) or its nearest
        registered parent's (multi-table inheritance)."""
        for candidate in (model, model._meta.concrete_model, *model._meta.get_parent_list()):
            found = self.customers.get(candidate)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    def events_for(self, model: type[models.Model]) -> list[ModelEvent]:
        events = self.events.get(model, [])
        if model._meta.proxy:
            events = events + self.events.get(model._meta.concrete_model, [])  # type: ignore
        return events


registry = Registry()


def register(model: type[models.Model]) -> Callable[[type[Customer]], type[Customer]]:
    """Class decorator: send rows of ``model`` to Customer.io as people."""

    def wrap(customer_class: type[Customer]) -> type[Customer]:
        if not (isinstance(customer_class, type) and issubclass(customer_class, Customer)):
            raise ConfigurationError("@django_cio.register(...) decorates a Customer subclass")
        registry.add_customer(model, customer_class())
        return customer_class

    return wrap


def register_event(
    model: type[models.Model], *, name: str, person: Callable[[Any], Any] | str,
    on: str | Callable[[Any, bool], bool] = "create",
    data: Callable[[Any], dict[str, Any]] | Sequence[str] | None = None,
    workspace: Callable[[Any], str | None] | None = None,
    timestamp: str | Callable[[Any], Any] | None = None,
) -> None:
    """Send event ``name`` for ``person(instance)`` when a row is created (``on="create"``),
    updated (``"update"``) or whenever ``on(instance, created)`` says so; to the workspace
    ``workspace(instance)`` names (by default, ``ROUTER``'s choice). With ``timestamp`` (a
    datetime field, or a callable), the event carries that time; a create event then also
    has an id of its row's own, so ``cio_backfill`` can send past rows' events safely."""
    check_model(model)
    if isinstance(data, str):
        raise ConfigurationError(f"register_event({model._meta.label}, name={name!r}): data "
                                 f"must be a list of field names or a callable, got a string")
    named = ([person] if isinstance(person, str) else []) + (
        list(data) if data is not None and not callable(data) else []) + (
        [timestamp] if isinstance(timestamp, str) else [])
    unknown = [attribute for attribute in named if not has_attribute(model, attribute)]
    if unknown:  # a typo fails at start-up, not at every save
        raise ConfigurationError(
            f"register_event({model._meta.label}, name={name!r}) names what the model does "
            f"not have: {', '.join(unknown)}"
        )
    registry.events.setdefault(model, []).append(
        ModelEvent(name, person, on, data, workspace, timestamp))


def identify_many(queryset: Iterable[Any], chunk: int = 500) -> int:
    """Identify every tracked row of a queryset (after ``bulk_create`` or ``update()``, which
    fire no signals), ``chunk`` rows to a message (or with the open transaction, on commit);
    returns how many were queued."""
    queued = 0
    rows = iter(_iterate(queryset, chunk))
    while piece := list(itertools.islice(rows, chunk)):
        with batch():
            for instance in piece:
                op = identify_op(instance, created=False)
                if op is not None:
                    enqueue(op)
                    queued += 1
    return queued


def person_id_for(instance: Any) -> str | Person:
    """The Customer.io id of a row: its registered ``Customer.person_id``, else its pk."""
    customer = registry.customer_for(instance.__class__)  # a lazy request.user too
    return customer.person_id(instance) if customer else str(instance.pk)


def workspace_for(instance: Any) -> str | None:
    """The workspace a row's person belongs to (its registered ``Customer.workspace``)."""
    customer = registry.customer_for(instance.__class__)  # a lazy request.user too
    return customer.workspace(instance) if customer else None


def attributes_for(instance: Any) -> dict[str, Any]:
    """The attributes a registered model sends for a row ({} if it is not registered)."""
    customer = registry.customer_for(instance.__class__)  # a lazy request.user too
    return customer.get_attributes(instance) if customer else {}


def autodiscover() -> None:
    """Import every installed app's ``customerio`` module, like the admin's ``admin.py``."""
    autodiscover_modules("customerio")


# -- signals --------------------------------------------------------------------------------

def _on_save(sender: type[models.Model], instance: Any, created: bool, raw: bool = False,
             using: str | None = None, update_fields: Any = None, **kwargs: Any) -> None:
    if raw:  # loading fixtures
        return
    customer = registry.customer_for(sender)
    if customer is not None and _touches(customer, update_fields):
        enqueue_for_signal(lambda: identify_op(instance, created, customer), using,
                 f"{sender._meta.label} identify ({type(customer).__name__})")
    for event in registry.events_for(sender):
        enqueue_for_signal(partial(_event_op, event, instance, created), using,
                 f"{sender._meta.label} {event.label}")


def _on_delete(sender: type[models.Model], instance: Any, using: str | None = None,
               **kwargs: Any) -> None:
    customer = registry.customer_for(sender)
    if customer is not None and customer.delete_on_model_delete:
        enqueue_for_signal(lambda: Delete(customer.person_id(instance),  # type: ignore[arg-type]
                                workspace=customer.workspace(instance)), using,
                 f"{sender._meta.label} delete ({type(customer).__name__})")


def connect_signals() -> None:
    """Called by ``AppConfig.ready``: post_save for every model (it costs nothing where nothing
    is registered). post_delete only for registered models (and their proxies), at
    registration, because a listener turns off Django's fast deletes."""
    post_save.connect(_on_save, dispatch_uid="django_cio.registry.save")


def identify_op(instance: Any, created: bool,
                customer: Customer | None = None) -> Identify | None:
    """The identify a save of ``instance`` sends, or None (not registered, not tracked)."""
    customer = customer or registry.customer_for(instance.__class__)  # a lazy request.user too
    if customer is None or not customer.should_track(instance):
        return None
    attributes = customer.get_attributes(instance)
    if created:
        attributes.setdefault("created_at", timezone.now())
    return Identify(customer.person_id(instance), attributes,  # type: ignore[arg-type]
                    workspace=customer.workspace(instance))


def _event_op(event: ModelEvent, instance: Any, created: bool) -> Event | None:
    return event.op(instance) if event.fires(instance, created) else None


def enqueue_for_signal(build: Callable[[], Operation | None], using: str | None,
                       source: str) -> None:
    """Build and queue an op for a signal; a bad one is logged with its ``source`` (model and
    registration) and a reason that holds no value, never raised into the save."""
    try:
        op = build()
        if op is not None:
            route(op)  # an unknown workspace is logged here too
    except Exception as exc:
        logger.error("customerio: %s not sent (%s)", source, safe_reason(exc))
        return
    if op is not None:
        enqueue(op, using=using)


def _touches(customer: Customer, update_fields: Any) -> bool:
    """A save with ``update_fields`` that names none of the tracked fields sends nothing. With
    ``get_attributes`` overridden any field may matter: send (dedup drops what is unchanged)."""
    if update_fields is None or type(customer).get_attributes is not Customer.get_attributes:
        return True
    return not customer.fields or bool(set(update_fields) & set(customer.fields))


def check_model(model: Any) -> None:
    if not (isinstance(model, type) and issubclass(model, models.Model)):
        raise ConfigurationError(f"django_cio registers Django models, not {model!r}")
    if model._meta.abstract:
        raise ConfigurationError(
            f"{model.__name__} is abstract: register the concrete models that inherit it"
        )


def with_proxies(model: type[models.Model]) -> list[type[models.Model]]:
    from django.apps import apps

    if not apps.ready:  # registered from a models module: proxies fall back at save time
        return [model]
    return [model, *(other for other in apps.get_models()
                     if other._meta.proxy and other._meta.concrete_model is model)]


def has_attribute(model: type[models.Model], name: str) -> bool:
    try:
        model._meta.get_field(name)
        return True
    except Exception:  # a property or method is fine too
        return hasattr(model, name)


def _iterate(queryset: Iterable[Any], chunk: int) -> Iterable[Any]:
    iterator = getattr(queryset, "iterator", None)
    return iterator(chunk_size=chunk) if iterator else queryset
