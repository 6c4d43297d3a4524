"""``manage.py cio_loadtest``: its parts (the whole run: tests/integration/test_loadtest.py)."""

import pytest

from django_cio import loadtest


def test_stages_are_rates_and_seconds():
    assert loadtest.parse_stages("10:20, 50:30.5") == [
        loadtest.Stage(10, 20.0), loadtest.Stage(50, 30.5)]
    for bad in ("10", "x:5", "0:5", "10:0", "10:-1", ""):
        with pytest.raises(loadtest.UsageError, match="--stages"):
            loadtest.parse_stages(bad)


def test_paths_name_method_path_and_events():
    assert loadtest.PathSpec.parse("POST /orders/ 2") == loadtest.PathSpec("POST", "/orders/", 2)
    assert loadtest.PathSpec.parse("/pricing/") == loadtest.PathSpec("GET", "/pricing/", 0)
    assert loadtest.PathSpec.parse("put /a/ ") == loadtest.PathSpec("PUT", "/a/", 0)
    for bad in ("POST", "POST orders/", "/a/ many", "GET /a/ 1 2", ""):
        with pytest.raises(loadtest.UsageError, match="--path"):
            loadtest.PathSpec.parse(bad)


def test_only_loopback_track_apis_unless_allowed():
    for url in ("http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:80"):
        loadtest.check_track_url(url, allow_real=False)
    for url in ("https://track-eu.customer.io", "http://192.168.1.2", "http://example.com"):
        with pytest.raises(loadtest.UsageError, match="--allow-real-customerio"):
            loadtest.check_track_url(url, allow_real=False)
        loadtest.check_track_url(url, allow_real=True)
    with pytest.raises(loadtest.UsageError, match="http"):
        loadtest.check_track_url("track.customer.io", allow_real=True)


def test_views_get_only_prefixed_person_ids(rf):
    assert loadtest.loadtest_person(rf.post("/", HTTP_X_CIO_LOADTEST_PERSON="loadtest-ab-1")) \
        == "loadtest-ab-1"
    assert loadtest.loadtest_person(rf.post("/", HTTP_X_CIO_LOADTEST_PERSON="42")) is None
    assert loadtest.loadtest_person(rf.post("/")) is None


def test_percentiles_by_nearest_rank():
    assert loadtest.percentiles(list(range(1, 101))) == {"p50": 50, "p95": 95, "p99": 99}
    assert loadtest.percentiles([]) == {"p50": None, "p95": None, "p99": None}


def _result(p95=10.0, failures=0, delivered=5, expected=5, lag=9.0):
    app = {"requests": 9, "failures": failures, "exceptions": 0, "duration": 3.0, "persons": 2,
           "percentiles_ms": {"p50": 1.0, "p95": p95, "p99": p95}, "errors": []}
    delivery = {"expected": expected, "delivered": delivered,
                "latency_ms": {"p50": 5.0, "p95": lag, "p99": lag}}
    return {"app": app, "delivery": delivery}


@pytest.mark.parametrize(("result", "breached"), [
    (_result(), []),
    (_result(p95=500.0), ["app latency p95", "app latency p99"]),
    (_result(failures=50), ["app errors"]),
    (_result(failures=9), ["app errors"]),  # every request failed, however few
    (_result(lag=10.0), ["enqueue-to-delivered p95"]),
    (_result(delivered=4), ["events delivered"]),
    (_result(delivered=6), []),  # a request that failed after queueing still delivers
    (_result(delivered=None), []),  # a real Track API: not measured, not judged
])
def test_limits_are_judged_value_below_limit(result, breached):
    plan = loadtest.Plan(stages=[loadtest.Stage(1, 1)], paths=[], limits={
        "p95_ms": 500, "p99_ms": 500, "errors": 50, "delivery_p95_ms": 10})
    rows = loadtest.report_rows(plan, result)
    assert [row.metric for row in rows if row.breached] == breached
    lines = list(loadtest.iter_breaches(rows))
    assert len(lines) == len(breached)
    assert all(line.startswith(name) for line, name in zip(lines, breached))
