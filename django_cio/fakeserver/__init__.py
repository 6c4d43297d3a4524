"""The bundled fake Customer.io Track API (see ``server.FakeTrackAPI``)."""

from .server import Config, FakeTrackAPI

__all__ = ["Config", "FakeTrackAPI"]
