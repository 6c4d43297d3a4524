"""The README's first command: the example project end to end on its embedded default."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the test run sets for itself must not leak into the example project's own settings.
_NOT_FOR_THE_DEMO = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")


@pytest.mark.integration
def test_the_demo_runs_end_to_end_with_no_services(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key not in _NOT_FOR_THE_DEMO and not key.startswith(("CUSTOMERIO_", "CIO_"))}
    env["DEMO_STATE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--timeout", "120"], cwd=ROOT / "example_project",
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    us, eu = out.split("What Customer.io's US workspace")[1].split("What Customer.io's EU")
    assert "people:   3" in us and "order_placed x2" in us and "login x1" in us
    assert "transactional emails: 4  (welcome, via send_mail())" in us  # one per signup
    assert "marie" not in us  # a customer in France lands in the EU workspace only
    assert "people:   1" in eu and "@example.fr" in eu
    assert "login x1" in eu and "order_placed x1" in eu
    assert "retries:  1 request(s)" in out
    assert "dedup:    off (no Redis cache)" in out  # a cache in files: dedup needs Redis
    assert "duplicate event ids: 0" in out and "Demo OK." in out
