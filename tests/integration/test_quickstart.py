"""docs/quickstart.md and docs/testing.md, run as written in a brand-new project.

``django-admin startproject``, then every snippet the docs mark with ``<!-- test: ... -->``,
verbatim: settings appended, files written, commands run, servers started (a real ``celery
worker`` and the bundled fake server). The test adds only what the docs leave to the reader:
the model the docs register (``yourapp.Order``), a view that runs the "in a view" snippet, a
signup view for the testing patterns, and an environment pointing the project at a private
Redis (broker and cache) with a free port for the fake server in place of the docs' 8765.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs"
BIN = Path(sys.executable).parent
MARKED = re.compile(r"<!-- test: (?P<action>[^>]*?) -->\n```\w*\n(?P<code>.*?)```", re.S)

MODELS = """\
from django.conf import settings
from django.db import models


class Order(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    total = models.DecimalField(max_digits=10, decimal_places=2)
"""
VIEWS = """\
from pathlib import Path

from django.contrib.auth import get_user_model
from django.http import HttpResponse

import django_cio


def in_a_view(request):
    snippet = Path(__file__).with_name("snippet.py").read_text()
    exec(snippet, {"django_cio": django_cio, "request": request})
    return HttpResponse("ok")


def signup(request):
    email = request.POST["email"]
    user = get_user_model().objects.create(username=email, email=email)
    django_cio.track(user.pk, "signed_up")
    return HttpResponse("welcome")
"""
URLS = """
from django.urls import path as _path

from yourapp import views as _views

urlpatterns += [_path("pricing/", _views.in_a_view), _path("signup/", _views.signup)]
"""


def snippets(page: str) -> list[tuple[str, str]]:
    """The marked snippets of a docs page, in order: (action, code)."""
    found = [(m["action"], m["code"]) for m in MARKED.finditer((DOCS / page).read_text())]
    assert found, f"no marked snippets in docs/{page}"
    return found


class Project:
    """A new Django project in ``root``, its commands run with this interpreter's tools."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
        self.servers: list[subprocess.Popen] = []

    def run(self, command: str) -> str:
        done = subprocess.run(command, shell=True, cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def start(self, command: str) -> None:
        with (self.root / f"server{len(self.servers)}.log").open("w") as log:
            self.servers.append(subprocess.Popen(command, shell=True, cwd=self.root,
                                                 env=self.env, stdout=log, stderr=log,
                                                 start_new_session=True))

    def stop(self) -> None:
        for server in self.servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in self.servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    def follow(self, page: str, port: int, files_only: bool = False) -> None:
        """Do what the page's marked snippets say (only write the files, if ``files_only``)."""
        for action, code in snippets(page):
            code = code.replace("8765", str(port))
            if files_only and not action.startswith(("append ", "write ", "run in a view")):
                continue
            if action.startswith(("append ", "write ")):
                verb, name = action.split(" ", 1)
                with (self.root / name).open("a" if verb == "append" else "w") as file:
                    file.write("\n" + code)
            elif action == "run":
                for line in code.splitlines():
                    self.run(line.split("#")[0])
            elif action == "start":
                self.start(code.strip())
            elif action == "run in a view":
                (self.root / "yourapp" / "snippet.py").write_text(code)
            else:
                raise AssertionError(f"unknown snippet action {action!r} in docs/{page}")


@pytest.fixture
def project(tmp_path: Path, private_redis) -> Iterator[Project]:
    env = {**os.environ, "CUSTOMERIO_SITE_ID": "quickstart-site",
           "CUSTOMERIO_API_KEY": "quickstart-key", "REDIS_URL": f"{private_redis.url[:-2]}/1",
           "CELERY_BROKER_URL": private_redis.url}
    for name in ("DJANGO_SETTINGS_MODULE", "CIO_TEST_QUEUE", "CUSTOMERIO_TRACK_URL"):
        env.pop(name, None)
    project = Project(tmp_path / "site", env)
    project.root.mkdir()
    project.run("django-admin startproject proj .")
    project.run("python manage.py startapp yourapp")
    (project.root / "yourapp" / "models.py").write_text(MODELS)
    (project.root / "yourapp" / "views.py").write_text(VIEWS)
    with (project.root / "proj" / "urls.py").open("a") as urls:
        urls.write(URLS)
    yield project
    project.stop()


def fake_get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


def test_the_quickstart_as_written_reaches_customerio(project, wait_for):
    port = free_port()
    project.follow("quickstart.md", port)
    assert "System check identified no issues" in project.run("python manage.py check")
    project.run("python manage.py shell -c " + shlex.quote(textwrap.dedent("""
        from django.contrib.auth import get_user_model
        from django.test import Client
        from yourapp.models import Order

        ada = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
        Order.objects.create(user=ada, total="9.50")
        client = Client(HTTP_HOST="localhost")
        client.force_login(ada)
        assert client.get("/pricing/").status_code == 200
    """)))

    def ada_arrived():
        people = fake_get(port, "/_fake/people")
        ada = next((pid for pid, p in people.items() if p.get("email") == "ada@example.com"),
                   None)
        events = ada and {e["name"] for e in fake_get(port, f"/_fake/events?person={ada}")}
        return events if events and {"order_placed", "upgraded", "viewed_pricing",
                                     "login"} <= events else None

    wait_for(ada_arrived, timeout=60)


def test_the_testing_patterns_as_written_pass_in_the_project(project):
    for number, (action, code) in enumerate(snippets("testing.md")):
        assert action == "pytest", f"unknown snippet action {action!r} in testing.md"
        (project.root / "yourapp" / f"test_docs_{number}.py").write_text(code)
    project.env["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    project.follow("quickstart.md", free_port(), files_only=True)
    output = project.run("python -m pytest -q -p no:cacheprovider yourapp")
    assert f"{number + 1} passed" in output
