"""Objects (companies, accounts, courses: what people belong to) and the relationships between
people and objects. Customer.io's v2 API has them; v1 has not, so they always travel as v2
(in a batch, or alone through ``/api/v2/entity``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ValidationError
from .kinds import Operation, PersonOp, V1Request
from .limits import MAX_OBJECT_ATTRIBUTES_BYTES
from .values import Json, check_attributes, check_id, check_positive_int, dumps


def check_object_type_id(kind: str, value: Any) -> str:
    """Object type ids are positive integers, sent as strings ("1")."""
    return str(check_positive_int(kind, "object_type_id", value,
                                  " (the object type's id in Customer.io, e.g. 1)"))


def _check_object_attributes(kind: str, name: str, attributes: Any) -> Json:
    clean = check_attributes(kind, attributes)
    size = len(dumps(clean))
    if size > MAX_OBJECT_ATTRIBUTES_BYTES:
        limit = MAX_OBJECT_ATTRIBUTES_BYTES
        raise ValidationError(kind, name, f"are {size} bytes; the limit is {limit}",
                              f"{limit} bytes")
    return clean


def _object_identifiers(object_type_id: str, object_id: str) -> Json:
    return {"object_type_id": object_type_id, "object_id": object_id}


def _no_v1(op: Operation) -> V1Request:
    raise ValidationError(op.kind, "v1", "does not exist: objects and relationships are v2 only")


@dataclass(frozen=True, repr=False)
class ObjectOp(Operation):
    """An op about one object: ``object_type_id`` (its type's id) and ``object_id``."""

    object_type_id: str
    object_id: str

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("object_type_id", check_object_type_id(self.kind, self.object_type_id))
        self._set("object_id", check_id(self.kind, "object_id", self.object_id))

    @property
    def person_id(self) -> str:  # what logs hash and dead letters list: the object
        return f"{self.object_type_id}:{self.object_id}"

    @property
    def people(self) -> tuple[str, ...]:
        return ()

    def v1_safe(self) -> bool:
        return False

    def v1(self) -> V1Request:
        return _no_v1(self)

    def _object(self, **fields: Any) -> Json:
        return {"type": "object",
                "identifiers": _object_identifiers(self.object_type_id, self.object_id),
                "action": self.action, **fields}

    def v2(self) -> Json:
        return self._object()


@dataclass(frozen=True, repr=False)
class IdentifyObject(ObjectOp):
    """Create or update an object with ``attributes`` (an upsert, safe to repeat)."""

    kind = "identify_object"
    action = "identify"
    attributes: Json = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("attributes", _check_object_attributes(self.kind, "attributes",
                                                         self.attributes))
        self._v2_only_fits()

    def v2(self) -> Json:
        return self._object(attributes=dict(self.attributes))


@dataclass(frozen=True, repr=False)
class DeleteObject(ObjectOp):
    """Delete an object (its relationships go with it)."""

    kind = "delete_object"
    action = "delete"


@dataclass(frozen=True, repr=False)
class AddRelationship(PersonOp):
    """Relate a person to an object, with relationship ``attributes`` (their role, say)."""

    kind = "add_relationship"
    action = "add_relationships"
    object_type_id: str
    object_id: str
    attributes: Json = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("object_type_id", check_object_type_id(self.kind, self.object_type_id))
        self._set("object_id", check_id(self.kind, "object_id", self.object_id))
        self._set("attributes", _check_object_attributes(self.kind, "attributes",
                                                         self.attributes))
        self._v2_only_fits()

    def v1_safe(self) -> bool:
        return False

    def v1(self) -> V1Request:
        return _no_v1(self)

    def v2(self) -> Json:
        relationship: Json = {"identifiers": _object_identifiers(self.object_type_id,
                                                                 self.object_id)}
        if self.attributes:
            relationship["relationship_attributes"] = dict(self.attributes)
        return self._person(cio_relationships=[relationship])


@dataclass(frozen=True, repr=False)
class DeleteRelationship(AddRelationship):
    """End a person's relationship to an object (both stay)."""

    kind = "delete_relationship"
    action = "delete_relationships"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attributes:
            raise ValidationError(self.kind, "attributes", "must be empty: a relationship "
                                  "is deleted whole")
