"""The bundled fake Customer.io Track API (see ``server.FakeTrackAPI``)."""

from .server import Config, FakeTrackAPI
from .site import FakeSite

__all__ = ["Config", "FakeSite", "FakeTrackAPI"]
