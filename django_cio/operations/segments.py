"""Manual segments: people added to or removed from a segment made in Customer.io, up to 1,000
per request, all named by one identifier type. The Track API has these in v1 only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..exceptions import ValidationError
from .identifiers import check_person, person_key
from .kinds import Operation, V1Request
from .limits import MAX_SEGMENT_PEOPLE
from .values import Json, check_positive_int


@dataclass(frozen=True, repr=False)
class AddToSegment(Operation):
    """Add ``person_ids`` (values, or ``Person``s of one identifier type) to manual segment
    ``segment_id``."""

    kind = "add_to_segment"
    action = "add_customers"
    batchable: ClassVar[bool] = False
    segment_id: int
    person_ids: list[str]
    id_type: str = field(default="id", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("segment_id", check_positive_int(self.kind, "segment_id", self.segment_id))
        people = self.person_ids
        if isinstance(people, (str, bytes)) or not isinstance(people, (list, tuple, set)) \
                or not 1 <= len(people) <= MAX_SEGMENT_PEOPLE:
            raise ValidationError(self.kind, "person_ids", f"must be a list of 1 to "
                                  f"{MAX_SEGMENT_PEOPLE} people", f"{MAX_SEGMENT_PEOPLE} people")
        checked = [check_person(self.kind, f"person_ids[{index}]", person, self.id_type)
                   for index, person in enumerate(people)]
        types = {id_type for _, id_type in checked}
        if len(types) > 1:
            raise ValidationError(self.kind, "person_ids", "must all be named by one "
                                  "identifier type (one request carries one id_type)")
        self._set("person_ids", list(dict.fromkeys(value for value, _ in checked)))
        self._set("id_type", types.pop())

    @property
    def person_id(self) -> str:  # what logs hash and dead letters list: the first person
        return self.person_ids[0]

    @property
    def people(self) -> tuple[str, ...]:
        return tuple(person_key(value, self.id_type) for value in self.person_ids)

    @property
    def id_types(self) -> frozenset[str]:
        return frozenset((self.id_type,))

    def v1(self) -> V1Request:
        path = f"/api/v1/segments/{self.segment_id}/{self.action}"
        if self.id_type != "id":
            path += f"?id_type={self.id_type}"
        return V1Request("POST", path, {"ids": list(self.person_ids)})

    def v2(self) -> Json:
        raise ValidationError(self.kind, "v2", "does not exist: manual segments are v1 only")

    def redacted(self) -> Json:
        return {**super().redacted(), "people": len(self.person_ids)}


@dataclass(frozen=True, repr=False)
class RemoveFromSegment(AddToSegment):
    """Remove people from a manual segment (those not in it are ignored)."""

    kind = "remove_from_segment"
    action = "remove_customers"


