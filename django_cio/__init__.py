"""django-cio: a Django project's people and events in Customer.io, reliably and fast.

Each call validates at once (a ``ValidationError`` names the bad field) and queues the op to be
sent after the current transaction commits, grouped with the transaction's other ops::

    import django_cio

    django_cio.identify(user.pk, email=user.email, plan="pro")
    django_cio.track(user.pk, "order_placed", total=order.total)
"""

from __future__ import annotations

from ._version import __version__
from .backends.locmem import outbox
from .operations import Person
from .producer import batch
from .registry import Customer, identify_many, register, register_event
from .workspaces import Workspace, move, workspace

# The verbs, for the workspace routing picks: explicit ops name one with workspace("eu").
_routed = Workspace()
at = _routed.at
identify = _routed.identify
track = _routed.track
track_anonymous = _routed.track_anonymous
page = _routed.page
page_anonymous = _routed.page_anonymous
screen = _routed.screen
screen_anonymous = _routed.screen_anonymous
delete = _routed.delete
suppress = _routed.suppress
unsuppress = _routed.unsuppress
add_device = _routed.add_device
delete_device = _routed.delete_device
merge = _routed.merge

__all__ = [
    "Customer", "Person", "Workspace", "__version__", "add_device", "at", "batch", "delete",
    "delete_device", "identify", "identify_many", "merge", "move", "outbox", "page",
    "page_anonymous", "register", "register_event", "screen", "screen_anonymous", "suppress",
    "track", "track_anonymous", "unsuppress", "workspace",
]
