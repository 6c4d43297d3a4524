import json

import pytest
from django.test import override_settings

import django_cio
from django_cio.backends import get_backend
from django_cio.backends.http import TrackAPIBackend
from django_cio.exceptions import ConfigurationError
from django_cio.operations import Event, Identify

OPS = [Identify("42", {"email": "ada@example.com"}), Event("42", "paid", {"amount": 12})]


def backend_named(name: str, **extra):
    with override_settings(CUSTOMERIO={"BACKEND": f"django_cio.backends.{name}", **extra}):
        return get_backend()


def test_default_is_the_http_backend():
    backend = get_backend()
    assert isinstance(backend, TrackAPIBackend)
    assert backend.client.base_url == "http://127.0.0.1:9"


def test_backend_is_cached_per_settings():
    assert get_backend() is get_backend()
    with override_settings(CUSTOMERIO={"BACKEND": "django_cio.backends.null.NullBackend"}):
        assert type(get_backend()).__name__ == "NullBackend"
    assert isinstance(get_backend(), TrackAPIBackend)


def test_http_backend_needs_credentials():
    with pytest.raises(ConfigurationError, match="SITE_ID"):
        backend_named("http.TrackAPIBackend")


def test_locmem_records_in_django_cio_outbox():
    django_cio.outbox.clear()
    backend = backend_named("locmem.LocMemBackend")
    assert backend.send_batch(OPS) == []
    backend.send_one(OPS[0])
    assert django_cio.outbox == [*OPS, OPS[0]]
    django_cio.outbox.clear()


def test_console_prints_redacted_ops(capsys):
    backend_named("console.ConsoleBackend").send_batch(OPS)
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["kind"] for line in lines] == ["identify", "event"]
    assert lines[0]["attributes"] == ["email"]
    assert "ada@example.com" not in out and '"42"' not in out and "12" not in out


def test_null_drops_everything(capsys):
    django_cio.outbox.clear()
    backend = backend_named("null.NullBackend")
    assert backend.send_batch(OPS) == []
    backend.send_one(OPS[1])
    assert django_cio.outbox == [] and capsys.readouterr().out == ""


def test_cio_outbox_fixture_switches_to_locmem(cio_outbox):
    get_backend().send_one(OPS[1])
    assert cio_outbox == [OPS[1]]


def test_offline_backends_refuse_what_v2_cannot_carry():
    from django_cio.exceptions import ValidationError
    from django_cio.operations import AnonymousEvent

    with pytest.raises(ValidationError, match="no v2 form"):
        backend_named("locmem.LocMemBackend").send_batch([AnonymousEvent("a", "x")])
    django_cio.outbox.clear()
