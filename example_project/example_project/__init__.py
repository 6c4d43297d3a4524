"""The example shop. Its Celery app is importable here: ``celery -A example_project worker``."""

from .celery import app

__all__ = ["app"]
