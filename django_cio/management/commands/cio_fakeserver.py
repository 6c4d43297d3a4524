from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_cio.conf import get_settings
from django_cio.fakeserver.cli import add_arguments, serve


class Command(BaseCommand):
    help = (
        "Run a fake Customer.io Track API (v1 and v2) on this machine, for the demo, tests and "
        "load tests. Basic auth is checked against CUSTOMERIO's SITE_ID/API_KEY unless "
        "--site-id/--api-key are given. Point CUSTOMERIO['TRACK_URL'] at the URL it prints."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_settings()
        options["site_id"] = options["site_id"] or config.site_id
        options["api_key"] = options["api_key"] or config.api_key
        serve(options, self.stdout)
