"""The test project's registrations, found by django-cio's autodiscovery at start-up."""

import django_cio
from tests.models import Order

django_cio.register_event(Order, name="order_placed", person="user_id", data=["total"])
