"""The snippets docs/workspaces.md marks with ``<!-- test: ... -->``, run as written."""

import re
import sys
import types
from pathlib import Path

import pytest

import django_cio
from django_cio.conf import find_problems, get_settings
from django_cio.operations import Event

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = Path(__file__).parents[1] / "docs" / "workspaces.md"
MARKED = re.compile(r"<!-- test: (?P<name>[^>]*?) -->\n```\w*\n(?P<code>.*?)```", re.S)


def snippet(name: str) -> str:
    return next(m["code"] for m in MARKED.finditer(PAGE.read_text()) if m["name"] == name)


@pytest.fixture
def documented(settings, cio_outbox, monkeypatch):
    """The settings as the page writes them (with credentials in the environment)."""
    for name in ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY", "CUSTOMERIO_EU_SITE_ID",
                 "CUSTOMERIO_EU_API_KEY"):
        monkeypatch.setenv(name, name.lower())
    namespace: dict = {}
    exec(snippet("settings"), namespace)
    settings.CUSTOMERIO = {**namespace["CUSTOMERIO"], "BACKEND": settings.CUSTOMERIO["BACKEND"]}
    return cio_outbox


def test_the_settings_are_valid_and_make_an_eu_workspace(documented):
    assert find_problems() == []
    eu = get_settings("eu")
    assert (eu.site_id, eu.base_url, eu.rate_limit) == (
        "customerio_eu_site_id", "https://track-eu.customer.io", "100/s")


def test_the_tenant_router_routes_each_tenant(documented, settings, monkeypatch):
    module = types.ModuleType("docs_tenant_router")
    exec(snippet("router"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "ROUTER": "docs_tenant_router.route",
                           "WORKSPACES": {name: {"SITE_ID": name, "API_KEY": "k"}
                                          for name in ("acme", "globex")}}
    assert module.route(Event("acme:42", "signed_up", {})) == "acme"
    django_cio.track("globex:7", "signed_up")
    django_cio.track("initech:1", "signed_up")
    assert [op.workspace for op in documented] == ["globex", "default"]


def test_the_move_deletes_then_identifies(documented):
    exec(snippet("move"), {"django_cio": django_cio})
    assert [(op.kind, op.workspace) for op in documented] == [("move", "default"),
                                                              ("identify", "eu")]
