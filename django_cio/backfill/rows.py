"""What a backfilled row sends: a registered person's identify and relationships, a registered
object's identify, and the create events registered with a ``timestamp`` (past orders), each
with its original time and its row's own id, so that a re-run never duplicates one."""

from __future__ import annotations

from typing import Any

from django.db import models

from ..objects import object_model_for, object_models, relationship_ops
from ..operations import Operation
from ..registry import identify_op, registry


def backfillable(model: type[models.Model]) -> bool:
    """Whether rows of ``model`` send anything when backfilled."""
    return (registry.customer_for(model) is not None or object_model_for(model) is not None
            or any(event.once_per_row for event in registry.events_for(model)))


def backfillable_models() -> list[type[models.Model]]:
    """Every model a backfill can send, proxies left out (their rows are their concrete
    model's rows)."""
    candidates = {*registry.customers, *object_models, *registry.events}
    return [model for model in candidates if not model._meta.proxy and backfillable(model)]


def row_ops(row: Any) -> list[Operation]:
    """The ops a backfill sends for ``row``, in order (an identify before relationships)."""
    ops: list[Operation] = []
    identify = identify_op(row, created=False)
    if identify is not None:
        ops += [identify, *relationship_ops(row)]
    object_model = object_model_for(type(row))
    if object_model is not None:
        ops.append(object_model.identify_op(row))
    ops += [event.op(row) for event in registry.events_for(type(row)) if event.once_per_row]
    return ops
