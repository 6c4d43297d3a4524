"""Manual segments from a many-to-many relation: a team's members kept in its Customer.io
segment, admin-style::

    django_cio.register_segment(Team, members="members", segment_id="cio_segment_id")

Adding members (``team.members.add(...)`` or ``user.teams.add(team)``) adds them to the
segment after the transaction commits, removing or clearing removes them, for teams whose
segment id is set. Members are named as their registered ``Customer`` names them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.models.signals import m2m_changed

from .exceptions import ConfigurationError, ValidationError
from .operations import AddToSegment, Person, RemoveFromSegment
from .operations.identifiers import check_person
from .operations.limits import MAX_SEGMENT_PEOPLE
from .privacy import safe_reason
from .registry import check_model, enqueue_for_signal, person_id_for

logger = logging.getLogger("django_cio")

# Where a row keeps the pks of the rows a clear() is about to take from it (pre_clear).
_CLEARING = "_django_cio_clearing"


@dataclass(frozen=True)
class SegmentRelation:
    """A relation of ``model`` whose members make up a manual segment."""

    model: type[models.Model]
    members: str
    segment_id: str | Callable[[Any], int | None]
    workspace: Callable[[Any], str | None] | None

    def segment_of(self, group: Any) -> int | None:
        if callable(self.segment_id):
            return self.segment_id(group)
        return getattr(group, self.segment_id)

    def ops(self, group: Any, people: Iterable[Any], add: bool) -> list[AddToSegment]:
        """Ops adding (or removing) ``people`` (rows) to ``group``'s segment, by identifier
        type and in chunks of 1,000; none when the group has no segment."""
        segment = self.segment_of(group)
        if segment is None:
            return []
        workspace = self.workspace(group) if self.workspace else None
        by_type: dict[str, list[Any]] = defaultdict(list)
        skipped = 0
        for row in people:
            try:  # one member who cannot be named keeps no one else out
                value, id_type = check_person("add_to_segment", "person_ids",
                                              person_id_for(row))
            except ValidationError:
                skipped += 1
                continue
            by_type[id_type].append(Person(**{id_type: value}))
        if skipped:
            logger.error("customerio: %s segment: %d member(s) left out (no valid identifier)",
                         self.model._meta.label, skipped)
        kind = AddToSegment if add else RemoveFromSegment
        return [kind(segment, chunk[start:start + MAX_SEGMENT_PEOPLE], workspace=workspace)
                for chunk in by_type.values() for start in range(0, len(chunk),
                                                                 MAX_SEGMENT_PEOPLE)]


# By the relation's through model: m2m_changed names it as the sender.
relations: dict[type[models.Model], SegmentRelation] = {}


def register_segment(model: type[models.Model], *, members: str,
                     segment_id: str | Callable[[Any], int | None],
                     workspace: Callable[[Any], str | None] | None = None) -> None:
    """Keep the many-to-many ``members`` of each ``model`` row (a ``Group``'s ``user_set``)
    in the manual segment whose id is the row's ``segment_id`` field (or ``segment_id(row)``;
    None: not synced)."""
    check_model(model)
    descriptor = getattr(model, members, None)
    through = getattr(getattr(descriptor, "rel", None), "through", None)
    if through is None:
        raise ConfigurationError(f"register_segment({model._meta.label}): {members!r} is not "
                                 f"a many-to-many relation of the model")
    if isinstance(segment_id, str) and not hasattr(model, segment_id):
        raise ConfigurationError(f"register_segment({model._meta.label}): the model has no "
                                 f"{segment_id!r}")
    relations[through] = SegmentRelation(model, members, segment_id, workspace)
    m2m_changed.connect(_on_change, sender=through,
                        dispatch_uid=f"django_cio.segments.{through._meta.label}")


def unregister_segment(model: type[models.Model], members: str) -> None:
    through = getattr(model, members).rel.through
    relations.pop(through, None)
    m2m_changed.disconnect(sender=through,
                           dispatch_uid=f"django_cio.segments.{through._meta.label}")


def _on_change(sender: type[models.Model], instance: Any, action: str, reverse: bool,
               model: type[models.Model], pk_set: set[Any] | None, using: str | None = None,
               **kwargs: Any) -> None:
    relation = relations.get(sender)
    if relation is None:
        return
    group_side = isinstance(instance, relation.model)
    if action == "pre_clear":  # the members are gone by post_clear: note them now
        accessor = getattr(instance, relation.members if group_side else
                           _groups_of_member(relation))
        object.__setattr__(instance, _CLEARING, set(accessor.values_list("pk", flat=True)))
        return
    if action == "post_clear":
        pk_set = getattr(instance, _CLEARING, set())
    elif action not in ("post_add", "post_remove"):
        return
    if not pk_set:
        return
    add = action == "post_add"
    others = list(model._default_manager.using(using).filter(pk__in=pk_set))
    pairs = [(instance, others)] if group_side else [(group, [instance]) for group in others]
    for group, people in pairs:
        for op in _safe_ops(relation, group, people, add):
            enqueue_for_signal(lambda op=op: op, using,  # type: ignore[misc]
                               f"{relation.model._meta.label} segment")


def _safe_ops(relation: SegmentRelation, group: Any, people: list[Any],
              add: bool) -> list[AddToSegment]:
    try:
        return relation.ops(group, people, add)
    except Exception as exc:  # never break the change that fired it
        logger.error("customerio: %s segment not sent (%s)", relation.model._meta.label,
                     safe_reason(exc))
        return []


def _groups_of_member(relation: SegmentRelation) -> str:
    """The accessor on a member row that lists its groups (``user.groups``)."""
    field = getattr(relation.model, relation.members).field
    if field.model is relation.model:  # members is the forward field: the reverse accessor
        return str(field.remote_field.get_accessor_name())
    return str(field.name)
