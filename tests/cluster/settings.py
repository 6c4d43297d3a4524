"""The example project as each host of the cluster tests runs it: its settings from the
environment (12-factor, like a deployment), the rate limit from ``CLUSTER_RATE_LIMIT``."""

import os

from example_project.settings import *  # noqa: F403

CUSTOMERIO = {**CUSTOMERIO, "RATE_LIMIT": os.environ.get("CLUSTER_RATE_LIMIT", "80/s")}  # noqa: F405
