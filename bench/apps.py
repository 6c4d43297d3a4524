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
