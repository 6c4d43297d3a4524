import os
import time

from django.apps import AppConfig


class BenchConfig(AppConfig):
    """The benchmarks' registrations. (Not in a ``customerio.py``: the benchmark scripts run
    from this folder, where that name would hide the official SDK's package.)"""

    name = "bench"

    def ready(self) -> None:
        from django.contrib.auth.models import User

        import django_cio

        @django_cio.register(User)
        class UserCustomer(django_cio.Customer):
            fields = ["email", "first_name", "is_active", "date_joined"]

        if os.environ.get("CIO_BENCH_SEND_LOG"):
            _log_sends(os.environ["CIO_BENCH_SEND_LOG"])


def _log_sends(path: str) -> None:
    """Append to ``path`` the moment each slot of the shared limiter is booked for
    (``slot <time>``) and each Track API request leaves this process (``send <time>``), one
    O_APPEND write a line so worker processes can share the file: bench/delivery.py compares
    the busiest second as booked and as sent with the busiest second the fake server saw."""
    from django_cio.client import TrackClient
    from django_cio.ratelimit import RateLimiter

    request, reserve = TrackClient._request, RateLimiter.reserve

    def log(what: str, moment: float) -> None:
        with open(path, "a") as file:
            file.write(f"{what} {moment}\n")

    def logged_request(self: TrackClient, *args: object, **kwargs: object) -> object:
        log("send", time.time())
        return request(self, *args, **kwargs)

    def logged_reserve(self: RateLimiter, max_wait: float) -> float:
        wait = reserve(self, max_wait)  # raises Throttled when nothing was booked
        log("slot", time.time() + wait)
        return wait

    TrackClient._request = logged_request  # type: ignore[method-assign]
    RateLimiter.reserve = logged_reserve  # type: ignore[method-assign]
