"""Celery beat's entry for the Outbox relay, for projects that turned the workers' own relay
off (``CUSTOMERIO['RELAY'] = False``) and prefer beat to ``cio_relay --loop``. Importable from
a project's ``celery.py`` before Django has loaded its apps::

    from django_cio.beat import beat_schedule

    app.conf.beat_schedule = beat_schedule()
"""

from __future__ import annotations

from typing import Any

from .conf import get_settings

RELAY_TASK = "django_cio.tasks.relay_outbox"


def beat_schedule(every: float = 5.0) -> dict[str, Any]:
    """The relay every ``every`` seconds, on django-cio's queue."""
    return {
        "django-cio-relay-outbox": {
            "task": RELAY_TASK,
            "schedule": every,
            # A relay that waited longer than its period is superseded by the next one.
            "options": {"queue": get_settings().queue, "expires": every},
        }
    }
