"""How an op names a person: by ``id`` (a plain value), ``email`` or ``cio_id`` (``Person``).

v2 says which one it means (``"identifiers": {"email": ...}``); a v1 path does not, and
Customer.io reads an email-shaped value there as an email (in workspaces that identify people by
email) and a ``cio_`` prefix as a cio_id. So an op goes as v1 only when v1 cannot misread it, and
the same call means the same thing with ``BATCH`` on or off.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import ValidationError
from .values import check_id

ID_TYPES = ("id", "email", "cio_id")


class Person:
    """A person by one identifier: ``Person(email="ada@example.com")``, ``Person(cio_id=...)``
    or ``Person(id=42)`` (the same as passing ``42``). Accepted wherever a person id is."""

    __slots__ = ("type", "value")
    type: str
    value: Any

    def __init__(self, *, id: Any = None, email: Any = None, cio_id: Any = None) -> None:
        given = [(name, value) for name, value in
                 (("id", id), ("email", email), ("cio_id", cio_id)) if value is not None]
        if len(given) != 1:
            raise ValidationError("person", "identifier",
                                  "give exactly one of id, email or cio_id")
        object.__setattr__(self, "type", given[0][0])
        object.__setattr__(self, "value", given[0][1])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Person is immutable")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Person) and (self.type, self.value) == (other.type, other.value))

    def __hash__(self) -> int:
        return hash((self.type, self.value))

    def __repr__(self) -> str:  # the value is PII
        return f"<Person by {self.type}>"


def check_person(kind: str, field: str, person: Any, id_type: Any = "id",
                 type_field: str = "id_type") -> tuple[str, str]:
    """(value, type) of a person given as a plain id (of type ``id_type``) or a ``Person``;
    a ``ValidationError`` names ``field`` or ``type_field``."""
    if isinstance(person, Person):
        person, id_type = person.value, person.type
    if not isinstance(id_type, str) or id_type not in ID_TYPES:
        raise ValidationError(kind, type_field, f"must be one of {', '.join(ID_TYPES)}")
    value = check_id(kind, field, person)
    if id_type == "email" and "@" not in value:
        raise ValidationError(kind, field, "is not an email address (no '@')")
    return value, id_type


def identifiers(value: str, id_type: str) -> dict[str, str]:
    """The v2 ``identifiers`` object (also v1 merge's ``primary`` and ``secondary``)."""
    return {id_type: value}


def v1_readable(value: str, id_type: str) -> bool:
    """Whether a v1 path segment holding ``value`` means this person in every workspace."""
    return id_type == "id" and "@" not in value and not value.startswith("cio_")


def person_key(value: str, id_type: str) -> str:
    """One string per (type, value), for grouping and memory: a plain id stays itself (so
    what was remembered before identifiers existed still matches); ids cannot hold NUL."""
    return value if id_type == "id" else f"{id_type}\x00{value}"
