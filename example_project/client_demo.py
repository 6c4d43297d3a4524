"""django-cio demo (embedded, no services): every op kind through TrackClient to the fake server.

Starts the bundled fake Track API on a free loopback port, sends one op of each kind as a v1
request, then the same people again packed into one v2 batch, and prints what Customer.io (the
fake) received. Run it with ``python3 dev.py demo``.
"""

from __future__ import annotations

import datetime as dt
import sys

import django
from django.conf import settings

settings.configure(USE_TZ=True)
django.setup()

from django_cio.client import TrackClient  # noqa: E402 - needs settings
from django_cio.fakeserver import FakeTrackAPI  # noqa: E402
from django_cio.operations import Event, Identify, Page  # noqa: E402


def main() -> int:
    with FakeTrackAPI(latency_ms=5) as fake:
        print(f"Fake Customer.io Track API on {fake.url}\n")
        client = TrackClient(fake.site_id, fake.api_key, url=fake.url)

        joined = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.timezone.utc)
        client.identify("ada@example.com", first_name="Ada", created_at=joined, plan="pro")
        client.track("ada@example.com", "order_placed", total=42.5, items=3)
        client.page("ada@example.com", "https://shop.example/orders/1")
        client.track_anonymous("anon-3f2a", "viewed_pricing", plan="pro")
        client.add_device("ada@example.com", "apns-token-1", "ios", app_version="2.3")
        client.delete_device("ada@example.com", "apns-token-1")
        client.identify("grace", first_name="Grace")
        client.merge("ada@example.com", "grace")
        client.suppress("spammer-9")
        client.unsuppress("spammer-9")
        client.identify("leaver-1", first_name="Lee")
        client.delete("leaver-1")

        batch = [Identify(f"user-{n}", {"n": n}) for n in range(100)]
        batch += [Event(f"user-{n}", "signed_up") for n in range(100)]
        batch.append(Page("user-1", "https://shop.example/"))
        refused = client.send_batch(batch)

        stats = fake.store.stats()
        print(f"{'requests':<22}{stats['requests']}  (statuses {stats['statuses']})")
        print(f"{'ops':<22}{stats['ops_total']}  {stats['ops']}")
        print(f"{'ops per request':<22}{stats['ops_per_request']}")
        print(f"{'people':<22}{stats['people']}")
        print(f"{'events':<22}{stats['events']}")
        print(f"{'refused in batch':<22}{len(refused)}")
        print("\nada@example.com:", fake.store.people["ada@example.com"])
        print("first events:")
        for event in fake.store.events[:3]:
            who = event["person"] or f"anonymous {event['anonymous_id']}"
            print(f"  {event['type']:<6} {event['name']:<32} {who:<22} id={event['id']}")
        ok = stats["statuses"] == {"200": 13} and not refused and stats["people"] == 101
        print("\nDemo OK." if ok else "\nDemo FAILED.")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
