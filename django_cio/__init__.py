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
from .objects import register_object
from .operations import Person
from .producer import batch
from .registry import Customer, identify_many, register, register_event
from .segments import register_segment
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
identify_object = _routed.identify_object
delete_object = _routed.delete_object
add_relationship = _routed.add_relationship
delete_relationship = _routed.delete_relationship
add_to_segment = _routed.add_to_segment
remove_from_segment = _routed.remove_from_segment
send_email = _routed.send_email
send_push = _routed.send_push
send_sms = _routed.send_sms

__all__ = [
    "Customer", "Person", "Workspace", "__version__", "add_device", "add_relationship",
    "add_to_segment", "at", "batch", "delete", "delete_device", "delete_object",
    "delete_relationship", "identify", "identify_many", "identify_object", "merge", "move",
    "outbox", "page", "page_anonymous", "register", "register_event", "register_object",
    "register_segment", "remove_from_segment", "screen", "screen_anonymous", "send_email",
    "send_push", "send_sms", "suppress", "track", "track_anonymous", "unsuppress", "workspace",
]
