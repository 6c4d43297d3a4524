from collections.abc import Iterator

import pytest

from django_cio.client import TrackClient
from django_cio.fakeserver import FakeTrackAPI


@pytest.fixture
def fake() -> Iterator[FakeTrackAPI]:
    """A fake Track API on a free loopback port, stopped after the test."""
    with FakeTrackAPI() as server:
        yield server


@pytest.fixture
def track_client(fake: FakeTrackAPI) -> Iterator[TrackClient]:
    """A TrackClient pointed at ``fake``."""
    track = TrackClient(fake.site_id, fake.api_key, url=fake.url, timeout=5)
    yield track
    track.close()
