"""What a fake Track API received, read over its ``/_fake/`` endpoints (the run's processes
do not share its memory), and when each op was made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plan import is_loopback


def created_at(event: dict[str, Any]) -> float | None:
    """When the op was made, in seconds: its ULID's millisecond clock, else its timestamp."""
    from ..operations import event_id_time

    made = event_id_time(event.get("id"))
    if made is not None:
        return made
    timestamp = event.get("timestamp")
    return float(timestamp) if isinstance(timestamp, (int, float)) else None


@dataclass
class FakeView:
    """What a fake Track API (``/_fake/``) received; ``connect`` gives ``None`` for others."""

    url: str
    site: str | None = None  # the site (workspace) to read, if it serves several

    @classmethod
    def connect(cls, url: str, site: str | None = None) -> FakeView | None:
        if not is_loopback(url):
            return None  # not asked: a real host gets no stray requests
        view = cls(url.rstrip("/"), site)
        try:
            view.stats()
        except Exception:
            return None
        return view

    def _get(self, what: str) -> Any:
        import requests

        params = {"site": self.site} if self.site else None
        response = requests.get(f"{self.url}/_fake/{what}", params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._get("stats")
        stats.pop("per_second", None)
        return stats

    def events(self, prefix: str) -> list[dict[str, Any]]:
        return [e for e in self._get("events") if str(e.get("person")).startswith(prefix)]

    def people(self, prefix: str) -> int:
        return sum(1 for person in self._get("people") if person.startswith(prefix))
