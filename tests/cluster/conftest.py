"""The cluster of ``deployment.py``, once per broker (Redis, then RabbitMQ) for the module.

Needs root (network namespaces); elsewhere the tests skip, saying so, unless
``CIO_REQUIRE_CLUSTER`` is set (CI sets it: there they must run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.deployment import BROKERS, Deployment, deployed
from tests.cluster.netns import unavailable

RATE_LIMIT = 10  # requests/s: low enough that the load binds it


@pytest.fixture(scope="module", params=sorted(BROKERS))
def deployment(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = unavailable()
    if reason:
        if os.environ.get("CIO_REQUIRE_CLUSTER"):
            pytest.fail(f"the cluster tests must run here, but {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with deployed(request.param, workdir, RATE_LIMIT) as running:
        yield running
