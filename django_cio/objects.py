"""Objects from models, admin-style: rows of a registered model are Customer.io objects
(companies, accounts), and a registered person's ``Customer.relationships`` relate them::

    django_cio.register_object(Company, object_type_id=1, fields=["name", "plan"])

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        def relationships(self, user):
            return [(user.company, {"role": user.role})] if user.company_id else []

A save identifies the object (and a person's save, after their identify, adds their
relationships); deleting the row deletes the object, and Customer.io its relationships.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models.signals import post_delete, post_save

from .exceptions import ConfigurationError, ValidationError
from .operations import AddRelationship, DeleteObject, IdentifyObject
from .operations.objects import check_object_type_id
from .privacy import safe_reason
from .registry import (
    Customer,
    check_model,
    enqueue_for_signal,
    field_value,
    has_attribute,
    registry,
    with_proxies,
)

logger = logging.getLogger("django_cio")


@dataclass(frozen=True)
class ObjectModel:
    """How rows of a model become objects of type ``object_type_id`` (see ``register_object``)."""

    object_type_id: str
    id: str | Callable[[Any], Any]
    fields: Sequence[str]
    attributes: Callable[[Any], dict[str, Any]] | None
    workspace: Callable[[Any], str | None] | None

    def object_id(self, instance: Any) -> Any:
        return self.id(instance) if callable(self.id) else getattr(instance, self.id)

    def where(self, instance: Any) -> str | None:
        return self.workspace(instance) if self.workspace else None

    def identify_op(self, instance: Any) -> IdentifyObject:
        if self.attributes is not None:
            attributes = self.attributes(instance)
        else:
            attributes = {name: field_value(instance, name) for name in self.fields}
        return IdentifyObject(self.object_type_id, self.object_id(instance), attributes,
                              workspace=self.where(instance))

    def delete_op(self, instance: Any) -> DeleteObject:
        return DeleteObject(self.object_type_id, self.object_id(instance),
                            workspace=self.where(instance))


# Registered object models (proxies find their concrete model's).
object_models: dict[type[models.Model], ObjectModel] = {}


def register_object(
    model: type[models.Model], *, object_type_id: int | str, id: str | Callable[[Any], Any] = "pk",
    fields: Sequence[str] = (), attributes: Callable[[Any], dict[str, Any]] | None = None,
    workspace: Callable[[Any], str | None] | None = None,
) -> None:
    """Send rows of ``model`` as objects of type ``object_type_id`` (the type's id in
    Customer.io), named by the ``id`` field (or ``id(row)``), with the ``fields`` (or
    ``attributes(row)``) as attributes; saves identify them, deletes delete them."""
    check_model(model)
    label = f"register_object({model._meta.label})"
    try:
        type_id = check_object_type_id("register_object", object_type_id)
    except ValidationError:
        raise ConfigurationError(f"{label}: object_type_id must be a positive integer (the "
                                 f"object type's id in Customer.io)") from None
    if isinstance(fields, str):
        raise ConfigurationError(f"{label}: fields must be a list of field names")
    unknown = [name for name in [*([id] if isinstance(id, str) else []), *fields]
               if not has_attribute(model, name)]
    if unknown:
        raise ConfigurationError(f"{label} names what the model does not have: "
                                 f"{', '.join(unknown)}")
    if model in object_models:
        raise ConfigurationError(f"{model._meta.label} is registered as an object twice")
    object_models[model] = ObjectModel(type_id, id, tuple(fields), attributes, workspace)
    for sender in with_proxies(model):
        post_delete.connect(_on_delete, sender=sender,
                            dispatch_uid=f"django_cio.objects.delete.{sender._meta.label}")


def unregister_object(model: type[models.Model]) -> None:
    """Forget an object registration (tests, apps that override)."""
    object_models.pop(model, None)
    for sender in with_proxies(model):
        post_delete.disconnect(sender=sender,
                               dispatch_uid=f"django_cio.objects.delete.{sender._meta.label}")


def object_model_for(model: type[models.Model]) -> ObjectModel | None:
    for candidate in (model, model._meta.concrete_model, *model._meta.get_parent_list()):
        found = object_models.get(candidate)  # type: ignore[arg-type]
        if found is not None:
            return found
    return None


def relationship_ops(instance: Any) -> Iterator[AddRelationship]:
    """The relationships a registered person's row has now (``Customer.relationships``)."""
    customer = registry.customer_for(instance.__class__)
    if customer is None or not customer.should_track(instance):
        return
    for related in customer.relationships(instance):
        row, attributes = related if isinstance(related, tuple) else (related, {})
        object_model = object_model_for(type(row))
        if object_model is None:
            raise ConfigurationError(f"{type(customer).__name__}.relationships returned a "
                                     f"{type(row).__name__}, which is not a registered object")
        yield AddRelationship(customer.person_id(instance),  # type: ignore[arg-type]
                              object_model.object_type_id, object_model.object_id(row),
                              attributes, workspace=customer.workspace(instance))


def connect_signals() -> None:
    """Called by ``AppConfig.ready``, after the registry's (a person's relationships follow
    their identify)."""
    post_save.connect(_on_save, dispatch_uid="django_cio.objects.save")


def _on_save(sender: type[models.Model], instance: Any, raw: bool = False,
             using: str | None = None, **kwargs: Any) -> None:
    if raw:
        return
    object_model = object_model_for(sender)
    if object_model is not None:
        enqueue_for_signal(lambda: object_model.identify_op(instance), using,
                           f"{sender._meta.label} object identify")
    customer = registry.customer_for(sender)
    if customer is not None and type(customer).relationships is not Customer.relationships:
        _enqueue_relationships(sender, instance, using)


def _enqueue_relationships(sender: type[models.Model], instance: Any, using: str | None) -> None:
    source = f"{sender._meta.label} relationships"
    try:
        ops = list(relationship_ops(instance))
    except Exception as exc:  # never break the save that fired it
        logger.error("customerio: %s not sent (%s)", source, safe_reason(exc))
        return
    for op in ops:
        enqueue_for_signal(lambda op=op: op, using, source)  # type: ignore[misc]


def _on_delete(sender: type[models.Model], instance: Any, using: str | None = None,
               **kwargs: Any) -> None:
    object_model = object_model_for(sender)
    if object_model is not None:
        enqueue_for_signal(lambda: object_model.delete_op(instance), using,
                           f"{sender._meta.label} object delete")
