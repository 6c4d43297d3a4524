"""What the shop tells Customer.io: its users are people, and placed orders are events."""

from django.contrib.auth import get_user_model

import django_cio

from .models import Order


@django_cio.register(get_user_model())
class UserCustomer(django_cio.Customer):
    fields = ["email", "first_name", "date_joined"]
    delete_on_model_delete = True

    def should_track(self, user):
        return user.is_active


django_cio.register_event(Order, name="order_placed", person="user_id", data=["total"])
