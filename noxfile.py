"""The supported Python and Django pairs, each in a fresh virtualenv against the local services:

    .venv/bin/nox              # every pair, and the unit layer with no services (CI runs
                               # this after ``python3 dev.py test``)
    .venv/bin/nox -s unit
    .venv/bin/nox -s "tests(python='3.10', django='4.2')"

``python3 dev.py test`` runs the whole suite on the machine's Python with the newest Django it
can install; the oldest pairs here run the tests that need no worker processes (the slow
integration and reliability layers add minutes, not coverage of a Django or Python API), the
newest pair runs everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nox

PAIRS = [("3.10", "4.2"), ("3.12", "5.2"), ("3.13", "6.1")]
NEWEST = PAIRS[-1]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True


def _enable_pyenv_interpreters() -> None:
    """pyenv's shims answer only for enabled versions: enable every installed one, so that
    ``python3.10`` and the rest are found on a fresh machine too."""
    pyenv = shutil.which("pyenv")
    if pyenv and "PYENV_VERSION" not in os.environ:
        installed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True,
                                   text=True, check=False).stdout.split()
        if installed:
            os.environ["PYENV_VERSION"] = ":".join(reversed(installed))


_enable_pyenv_interpreters()


# The unit layer (tests/ but integration, reliability and cluster) needs no service: SQLite,
# kombu's in-memory broker, and a Redis address where nothing listens.
NO_SERVICES = {
    "DATABASE_URL": "sqlite:///unit-tests.sqlite3",
    "REDIS_URL": "redis://127.0.0.1:9/0",
    "CIO_TEST_REDIS_BROKER": "memory://",
    "CIO_TEST_AMQP_BROKER": "memory://",
}


@nox.session(python=False)
def unit(session: nox.Session) -> None:
    """The unit tests with every service out of reach, in this (dev.py's) environment."""
    session.run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                *(f"--ignore=tests/{layer}" for layer in ("integration", "reliability", "cluster")),
                *session.posargs, env=NO_SERVICES)


@nox.session
@nox.parametrize(("python", "django"), PAIRS)
def tests(session: nox.Session, django: str) -> None:
    session.install("-e", ".[test]", f"Django=={django}.*")
    session.run("python", "-m", "django", "--version")
    fast = [] if (session.python, django) == NEWEST else ["-m", "not integration"]
    # The whole suite again: the chaos test with another seed than the main run's.
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *fast,
                *session.posargs, env={"CIO_CHAOS_SEED": os.environ.get("CIO_CHAOS_SEED", "7")})
