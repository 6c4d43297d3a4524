from __future__ import annotations

from collections.abc import Sequence

from ..client import OpError, TrackClient
from ..conf import CIOSettings
from ..exceptions import ConfigurationError
from ..operations import Operation
from .base import BaseBackend


class TrackAPIBackend(BaseBackend):
    """The real thing: ops go to the Track API through a ``TrackClient``, from Celery workers."""

    def __init__(self, config: CIOSettings) -> None:
        super().__init__(config)
        if not config.site_id or not config.api_key:
            raise ConfigurationError(
                "CUSTOMERIO['SITE_ID'] and CUSTOMERIO['API_KEY'] are required by the HTTP backend"
            )
        self.client = TrackClient.from_settings(config)

    def send_one(self, op: Operation) -> None:
        self.client.send(op)

    def send_batch(self, ops: Sequence[Operation]) -> list[OpError]:
        return self.client.send_batch(ops)
