from __future__ import annotations

from collections.abc import Sequence

from ..client import AppClient, OpError, TrackClient
from ..conf import CIOSettings, no_app_key
from ..exceptions import ConfigurationError
from ..operations import Operation, SendMessage
from .base import BaseBackend


class TrackAPIBackend(BaseBackend):
    """The real thing: ops go to the Track API through a ``TrackClient``, and transactional
    messages to the App API through an ``AppClient`` (when ``APP_API_KEY`` is set), from
    Celery workers."""

    def __init__(self, config: CIOSettings) -> None:
        super().__init__(config)
        if not config.site_id or not config.api_key:
            raise ConfigurationError(
                "CUSTOMERIO['SITE_ID'] and CUSTOMERIO['API_KEY'] are required by the HTTP backend"
            )
        self.client = TrackClient.from_settings(config)
        self.app_client = AppClient.from_settings(config) if config.app_api_key else None

    def send_one(self, op: Operation) -> None:
        self.client.send(op)

    def send_batch(self, ops: Sequence[Operation]) -> list[OpError]:
        return self.client.send_batch(ops)

    def send_message(self, op: SendMessage) -> str | None:
        if self.app_client is None:
            raise no_app_key(self.settings)
        return self.app_client.send_message(op)["delivery_id"]
