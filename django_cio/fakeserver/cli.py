"""Options shared by ``manage.py cio_fakeserver`` and ``python -m django_cio.fakeserver``."""

from __future__ import annotations

import argparse
import signal
from typing import Any, Protocol

from .server import FakeTrackAPI


class Output(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8765, help="Port (default 8765; 0 = any free).")
    parser.add_argument("--site-id", help="Site id that Basic auth must carry.")
    parser.add_argument("--api-key", help="API key that Basic auth must carry.")
    parser.add_argument("--region", default="us", choices=["us", "eu"],
                        help="Region the region endpoint answers (default us).")
    parser.add_argument("--site", action="append", default=[], type=_site,
                        metavar="SITE_ID:API_KEY[:REGION]",
                        help="Serve another workspace too, with people, events and limits of "
                        "its own (repeatable).")
    parser.add_argument("--latency-ms", type=float, default=0, help="Delay added to every answer.")
    parser.add_argument("--rate-limit", type=float, default=None,
                        help="Requests per second before answering 429 (default: no cap).")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="Share of requests answered 503, 0 to 1 (default 0).")
    parser.add_argument("--lenient", action="store_true",
                        help="Accept what the real API would refuse (no limit checks).")


def _site(value: str) -> tuple[str, str, str]:
    site_id, _, rest = value.partition(":")
    api_key, _, region = rest.partition(":")
    if not site_id or not api_key or region not in ("", "us", "eu"):
        raise argparse.ArgumentTypeError("use SITE_ID:API_KEY, or SITE_ID:API_KEY:REGION "
                                         "with a region of us or eu")
    return site_id, api_key, region or "us"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(options: dict[str, Any], out: Output) -> None:
    """Run the fake server in the foreground until Ctrl-C or SIGTERM."""
    faults = {"latency_ms": options["latency_ms"], "rate_limit": options["rate_limit"],
              "error_rate": options["error_rate"], "strict": not options["lenient"]}
    fake = FakeTrackAPI(
        host=options["host"], port=options["port"],
        site_id=options["site_id"] or "fake-site-id", api_key=options["api_key"] or "fake-api-key",
        region=options["region"], **faults,
    )
    for site_id, api_key, region in options["site"]:
        if site_id not in fake.sites:  # a site id is one workspace, however many names it has
            fake.add_site(site_id, api_key, region, **faults)
    signal.signal(signal.SIGTERM, _interrupt)
    sites = ", ".join(f"{site.site_id!r} ({site.region})" for site in fake.sites.values())
    out.write(f"Fake Customer.io Track API on {fake.url} (site id {sites}); "
              f"stats at {fake.url}/_fake/stats[?site=ID]. Ctrl-C to stop.\n")
    out.flush()
    try:
        fake.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
