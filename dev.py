#!/usr/bin/env python3
"""The project's two commands, on a fresh machine with Python 3 and nothing else:

    python3 dev.py demo    # the example end to end on an embedded default, no services needed
    python3 dev.py test    # the whole test suite (uses local PostgreSQL and Redis)

and ``python3 dev.py lint`` (ruff, mypy, then import-linter's layers contract). Each creates
``.venv`` on first use and installs the package with its test extras into it, again only when
``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_venv() -> None:
    """Create .venv and install django-cio[test] into it, unless it is up to date."""
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not PYTHON.exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("Installing django-cio[test] into .venv ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    stamp.write_text(wanted)


def run(*args: str) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    commands = {
        "demo": lambda extra: run("example_project/manage.py", "demo", *extra),
        # Two xdist workers: the tests that start processes on one, one at a time (see
        # tests/conftest.py), the rest beside them.
        "test": lambda extra: run("-m", "pytest", "-n", "2", *extra),
        "lint": lambda extra: (run("-m", "ruff", "check", ".", *extra) or run("-m", "mypy")
                               or subprocess.run([str(BIN / "lint-imports")], cwd=ROOT)
                               .returncode),
    }
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    ensure_venv()
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
