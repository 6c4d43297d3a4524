"""``manage.py cio_loadtest``: the project's own views under a ramp of requests per second, with
what reached Customer.io measured at the other end.

The path under test is the whole one: request → ``request.cio``/model signals → broker → worker
→ Track API (by default the bundled fake server, so nothing leaves the machine). Each part in the
process it needs:

* ``plan``: the options, checked before anything starts (a ``UsageError`` names the option);
  a Track API that is not on this machine, or is Customer.io's, is refused unless allowed.
* ``swarm``: Locust as a library (a ``LoadTestShape`` of the stages, headless), in a process of
  its own: importing locust monkey-patches the whole process with gevent, which the command's
  own Django code must not run under.
* ``run``: starts the fake server, the app (gunicorn) and Celery workers, runs the Locust
  process, waits for the deliveries and optionally deletes the persons it made.
* ``report``: judges the numbers against their limits and writes ``loadtest.csv`` and
  ``loadtest.html``.

Each simulated visitor names its person id in the ``X-CIO-Loadtest-Person`` header, tagged with
the run's prefix; the views under test use it (``loadtest_person``) as the Customer.io id, so
what arrived is told apart from anything else, and ``--cleanup`` knows whom to delete.
"""

from .plan import (
    DEFAULT_STAGES,
    EXAMPLE_FIRST,
    EXAMPLE_PATHS,
    HEADER,
    LIMITS,
    PREFIX,
    PathSpec,
    Plan,
    Stage,
    UsageError,
    check_installed,
    check_track_url,
    is_loopback,
    loadtest_person,
    parse_stages,
)
from .report import format_table, iter_breaches, report_rows, write_report
from .run import LoadTest, RunFailed
from .swarm import percentiles

__all__ = [
    "DEFAULT_STAGES", "EXAMPLE_FIRST", "EXAMPLE_PATHS", "HEADER", "LIMITS", "PREFIX", "LoadTest",
    "PathSpec", "Plan", "RunFailed", "Stage", "UsageError", "check_installed", "check_track_url",
    "format_table", "is_loopback", "iter_breaches", "loadtest_person", "parse_stages",
    "percentiles", "report_rows", "write_report",
]
