"""``manage.py cio_loadtest``, the whole run on the example project in a subprocess
(importing locust would patch this process with gevent); its parts: tests/test_loadtest.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the test run sets for itself must not leak into the example project's own settings.
_NOT_FOR_THE_EXAMPLE = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")


def run_loadtest(tmp_path: Path, *options: str, timeout: float = 240, **env_vars: str):
    env = {key: value for key, value in os.environ.items()
           if key not in _NOT_FOR_THE_EXAMPLE and not key.startswith(("CUSTOMERIO_", "CIO_"))}
    env["DEMO_STATE_DIR"] = str(tmp_path / "state")
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "manage.py", "cio_loadtest", "--out", str(tmp_path / "out"), *options],
        cwd=ROOT / "example_project", env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.integration
@pytest.mark.slow
# On the example's "eu" workspace: the whole default path, plus the routing of every part.
@pytest.mark.parametrize("workspace", ["eu"])
def test_a_short_ramp_through_the_example_project_delivers_everything(tmp_path, private_redis,
                                                                      workspace):
    # On a Redis of its own: the example's embedded file broker (kombu's filesystem transport)
    # now and then hands a consumer a message file its producer has not written yet, and that
    # message is lost; delivered == expected would then fail for a reason not under test.
    # Limits far above what a loaded 2-core machine takes: this test is about the path.
    result = run_loadtest(tmp_path, "--stages", "5:3,10:3", "--workers", "1", "--cleanup",
                          "--p95-ms", "5000", "--p99-ms", "10000", "--workspace", workspace,
                          CELERY_BROKER_URL=private_redis.url,
                          REDIS_URL=private_redis.url.replace("/0", "/1"))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"the load test's people go to workspace {workspace!r}" in out
    assert re.search(r"app latency p95\s+[\d.,]+ ms\s+< 5000 ms\s+ok", out), out
    assert re.search(r"enqueue-to-delivered p95\s+[\d.,]+ ms", out), out
    delivered, expected = re.search(
        r"events delivered\s+([\d,]+)\s+ok\s+of ([\d,]+) expected", out).groups()
    assert delivered == expected and int(expected) > 0
    assert re.search(r"Track API 429s\s+0\b", out)
    assert re.search(r"persons left after cleanup\s+0\b", out)
    assert "Load test OK." in out
    reports = tmp_path / "out"
    for name in ("loadtest.csv", "loadtest.html", "locust.html", "locust_stats.csv",
                 "locust_stats_history.csv", "deliveries.csv"):
        assert (reports / name).stat().st_size > 0, name
    assert "app latency p95,", (reports / "loadtest.csv").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_a_breached_limit_exits_1_and_says_which(tmp_path, private_redis):
    # On a Redis of its own (the example's embedded file broker polls: 25 s more for the
    # same path); the embedded defaults run end to end in test_demo.py.
    result = run_loadtest(tmp_path, "--stages", "4:2", "--workers", "1", "--p95-ms", "0.001",
                          CELERY_BROKER_URL=private_redis.url,
                          REDIS_URL=private_redis.url.replace("/0", "/1"))

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"app latency p95\s+[\d.,]+ ms\s+< 0.001 ms\s+BREACHED", result.stdout)
    assert "limits breached: app latency p95" in result.stderr
    assert (tmp_path / "out" / "loadtest.html").exists()


@pytest.mark.integration
@pytest.mark.parametrize("url", ["https://track.customer.io", "http://10.1.2.3:8765"])
def test_a_track_api_off_this_machine_is_refused_before_anything_starts(tmp_path, url):
    result = run_loadtest(tmp_path, "--track-url", url, timeout=60)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--allow-real-customerio" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_an_app_off_this_machine_is_refused_before_anything_starts(tmp_path):
    result = run_loadtest(tmp_path, "--host", "http://10.1.2.3:8000", timeout=60)

    assert result.returncode == 2 and "--allow-remote-host" in result.stderr
    assert not (tmp_path / "out").exists()
