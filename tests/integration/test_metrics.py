"""Prometheus metrics and the per-request log line, from a real worker and the fake server."""

import logging
import urllib.request

import pytest
from prometheus_client import REGISTRY

import django_cio
from django_cio import metrics
from django_cio.models import DeadLetter
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def value(name: str, **labels: str) -> float:
    """A sample of the default workspace."""
    return REGISTRY.get_sample_value(name, {"workspace": "default", **labels}) or 0.0


def test_ops_requests_retries_dead_letters_dedup_and_lag_are_counted(worker, wait_for):
    fake = worker.cio_fake
    before = {
        "sent": value("customerio_ops_total", kind="event", result="sent"),
        "207": value("customerio_requests_total", status="207"),
        "503": value("customerio_requests_total", status="503"),
        "retries": value("customerio_retries_total"),
        "dead": value("customerio_dead_letters_total", kind="identify"),
        "hits": value("customerio_dedup_hits_total"),
        "lag": value("customerio_delivery_lag_seconds_count"),
    }
    fake.configure(refuse=["refused"])
    fake.fail_next(503)
    with django_cio.batch():
        django_cio.identify("m1", email="m1@example.com")
        django_cio.identify("refused", email="no@example.com")
        django_cio.track("m1", "signed_up")
    wait_for(lambda: fake.store.events and DeadLetter.objects.exists())
    django_cio.identify("m1", email="m1@example.com")  # the same again: a dedup hit
    wait_for(lambda: value("customerio_dedup_hits_total") > before["hits"])
    assert value("customerio_ops_total", kind="event", result="sent") == before["sent"] + 1
    assert value("customerio_requests_total", status="503") == before["503"] + 1
    assert value("customerio_requests_total", status="207") == before["207"] + 1
    assert value("customerio_retries_total") == before["retries"] + 3
    assert value("customerio_dead_letters_total", kind="identify") == before["dead"] + 1
    assert value("customerio_delivery_lag_seconds_count") == before["lag"] + 1


def test_each_request_logs_one_line_with_its_numbers_as_fields(worker, wait_for, caplog):
    caplog.set_level(logging.INFO, logger="django_cio.requests")
    django_cio.track("m2", "clicked", secret="value-never-logged")
    wait_for(lambda: worker.cio_fake.store.events)
    record = next(r for r in caplog.records if r.name == "django_cio.requests")
    assert record.customerio["ops"] == 1 and record.customerio["status"] == 200
    assert record.customerio["bytes"] > 0 and "value-never-logged" not in caplog.text


def test_serve_exposes_the_metrics_over_http():
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert "customerio_ops_total" in body and "customerio_request_seconds_bucket" in body
