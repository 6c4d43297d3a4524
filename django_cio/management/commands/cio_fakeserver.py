from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_cio.conf import get_settings
from django_cio.fakeserver.cli import add_arguments, serve


class Command(BaseCommand):
    help = (
        "Run a fake Customer.io Track API (v1 and v2) on this machine, for the demo, tests and "
        "load tests. It serves each workspace of CUSTOMERIO (SITE_ID/API_KEY, and those of "
        "WORKSPACES) with state and limits of its own, unless --site-id/--api-key are given. "
        "Point each workspace's TRACK_URL at the URL it prints."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_settings()
        if not options["site_id"]:
            options.update(site_id=config.site_id, api_key=config.api_key, region=config.region)
            options["site"] += [(named.site_id, named.api_key, named.region)
                                for named in map(get_settings, config.workspaces)
                                if named.site_id and named.api_key]
        serve(options, self.stdout)
