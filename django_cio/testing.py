"""pytest fixtures for projects that use django-cio (loaded automatically as a pytest plugin).

``cio_outbox`` switches to the locmem backend and gives the list of ops "sent"::

    def test_signup(client, cio_outbox):
        client.post("/signup/", {...})
        assert [op.kind for op in cio_outbox] == ["identify", "event"]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .backends.locmem import outbox
from .privacy import showing_ids

LOCMEM_BACKEND = "django_cio.backends.locmem.LocMemBackend"


@pytest.fixture
def cio_outbox(settings: Any) -> Iterator[list[Any]]:
    """The ops django-cio would have sent during the test (uses pytest-django's ``settings``).
    Their reprs in the test's output show the real person ids."""
    settings.CUSTOMERIO = {**getattr(settings, "CUSTOMERIO", {}), "BACKEND": LOCMEM_BACKEND}
    outbox.clear()
    with showing_ids():
        yield outbox
    outbox.clear()
