"""Every test pattern docs/testing.md shows records every op the code under test makes, in
the cases a project meets first: a tracked row saved before the block, a login inside it, two
blocks in one test, and Django's ``TestCase``. (The capture pattern once lost every op made
inside the block when the test had saved a tracked row before it.)"""

import pytest
from django.contrib.auth.models import User
from django.test import TestCase

import django_cio
from django_cio.backends.locmem import outbox
from django_cio.registry import registry
from tests.models import Order

LOCMEM = {"SITE_ID": "s", "API_KEY": "k", "BACKEND": "django_cio.backends.locmem.LocMemBackend"}


@pytest.fixture
def users_tracked(settings, cio_outbox):
    """Users registered, and the auth signals on (the test settings turn them off)."""
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "AUTH_SIGNALS": True}

    @django_cio.register(User)
    class UserCustomer(django_cio.Customer):
        fields = ["email"]

    yield
    registry.unregister(User)


def names(ops):
    return [(op.kind, getattr(op, "name", None)) for op in ops]


@pytest.mark.django_db  # each test in a transaction that never commits
def test_capture_after_a_tracked_row_was_saved_before_the_block(
        client, cio_outbox, django_capture_on_commit_callbacks, users_tracked):
    user = User.objects.create(username="ada", email="ada@example.com")  # before the block
    Order.objects.create(user=user, total=5)
    with django_capture_on_commit_callbacks(execute=True):
        client.get("/signup/", {"username": "bob"})
    assert names(cio_outbox) == [("identify", None), ("identify", None),
                                 ("event", "signed_up")]


@pytest.mark.django_db  # each test in a transaction that never commits
def test_capture_with_a_login_inside_the_block(
        client, cio_outbox, django_capture_on_commit_callbacks, users_tracked):
    User.objects.create(username="ada", email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        client.get("/login/", {"username": "ada"})
    assert ("event", "login") in names(cio_outbox)


@pytest.mark.django_db  # each test in a transaction that never commits
def test_two_capture_blocks_in_one_test(client, cio_outbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client.get("/signup/", {"username": "ada"})
    with django_capture_on_commit_callbacks(execute=True):
        client.get("/signup/", {"username": "bob"})
    assert [name for _, name in names(cio_outbox)].count("signed_up") == 2


@pytest.mark.django_db(transaction=True)
def test_a_transactional_test_needs_no_capture(client, cio_outbox):
    client.get("/signup/", {"username": "ada"})
    assert names(cio_outbox) == [("identify", None), ("event", "signed_up")]


class SignupTestCase(TestCase):
    """Django's own ``TestCase`` with ``captureOnCommitCallbacks``, as testing.md shows."""

    def test_signup_is_tracked(self):
        with self.settings(CUSTOMERIO=LOCMEM):
            outbox.clear()
            User.objects.create(username="first")  # a row saved before the block
            with self.captureOnCommitCallbacks(execute=True):
                self.client.get("/signup/", {"username": "ada"})
            assert names(outbox) == [("identify", None), ("event", "signed_up")]
            outbox.clear()
