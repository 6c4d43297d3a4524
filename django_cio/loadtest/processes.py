"""The child processes of a run (fake server, gunicorn, Celery workers, Locust): each in a
session of its own, logged to a file, stopped group and all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


class Processes:
    """Child processes, each in a session of its own, stopped (group and all) on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []
        # The project importable as it is here (manage.py's folder), whatever the cwd.
        path = dict.fromkeys([sys.path[0] or os.getcwd(), os.getcwd(),
                              *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            child = subprocess.Popen(command, env={**self.env, **env},  # noqa: S603
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(child)
        return child

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for child in reversed(self.children):
            stop(child)


def stop(child: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM to the process (gunicorn and celery stop their children and finish what they
    hold), then SIGKILL to its whole session if it takes too long or left any behind."""
    if child.poll() is None:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
