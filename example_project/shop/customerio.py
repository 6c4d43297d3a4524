"""What the shop tells Customer.io: its users are people, and placed orders are events; people
in Europe go to the EU workspace."""

from django.contrib.auth import get_user_model

import django_cio

from .models import Order

EU_DOMAINS = {"at", "be", "de", "dk", "es", "eu", "fi", "fr", "ie", "it", "nl", "pl", "pt", "se"}


@django_cio.register(get_user_model())
class UserCustomer(django_cio.Customer):
    fields = ["email", "first_name", "date_joined"]
    delete_on_model_delete = True

    def should_track(self, user):
        return user.is_active

    def workspace(self, user):
        # A real project keeps the data region on the user (a data_region field); Django's
        # own User has none, so the example shop goes by the email's country domain.
        return "eu" if user.email.rpartition(".")[2] in EU_DOMAINS else None


django_cio.register_event(Order, name="order_placed", person="user_id", data=["total"],
                          workspace=lambda order: UserCustomer().workspace(order.user))
