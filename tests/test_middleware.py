"""The middleware and the auth signals, through Django's test clients (locmem backend)."""

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection, transaction

import django_cio
from django_cio.checks import check_middleware
from django_cio.middleware import CustomerIOMiddleware

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cio(settings, cio_outbox):
    """The outbox, with page views and auth signals on."""
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "PAGE_VIEWS": True, "AUTH_SIGNALS": True}
    return cio_outbox


def summary(outbox):
    return [(op.kind, getattr(op, "type", None) or getattr(op, "name", None)) for op in outbox]


def test_a_visitor_is_tracked_by_an_anonymous_cookie_set_only_when_needed(client, cio):
    response = client.get("/pricing/")
    cookie = response.cookies["cio_anonymous_id"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert summary(cio) == [("anonymous_event", "event"), ("anonymous_event", "page")]
    assert {op.anonymous_id for op in cio} == {cookie.value}
    client.get("/pricing/")  # the same visitor keeps the same id
    assert {op.anonymous_id for op in cio} == {cookie.value}
    assert "cio_anonymous_id" not in client.get("/api/").cookies


def test_everything_a_request_makes_is_one_message_on_the_broker(client, settings, published):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "PAGE_VIEWS": True}  # HTTP backend: broker
    user = User.objects.create(username="ada")
    client.force_login(user)
    client.get("/order/")  # a model event, a view's event (both on commit), a page view
    assert [[op.get("name") for op in message] for message in published] == [
        ["order_placed", "checkout_done", "http://testserver/order/"]
    ]


def test_page_views_only_for_successful_html_gets_outside_skipped_paths(client, cio):
    client.get("/quiet/")
    client.get("/static/app.css")
    client.get("/api/")
    client.post("/quiet/")
    client.get("/missing/")
    assert summary(cio) == [("anonymous_event", "page")]
    assert cio[0].name == "http://testserver/quiet/"


def test_page_views_are_off_by_default(client, cio_outbox):
    client.get("/quiet/")
    assert cio_outbox == []


def test_login_identifies_with_the_anonymous_id_and_tracks_login(client, cio):
    user = User.objects.create(username="ada")
    anonymous = client.get("/pricing/").cookies["cio_anonymous_id"].value
    cio.clear()
    response = client.get("/login/", {"username": "ada"})
    identify, login, page = cio
    assert (identify.kind, identify.person_id) == ("identify", str(user.pk))
    assert identify.attributes == {"anonymous_id": anonymous}
    assert (login.kind, login.name, login.data) == ("event", "login", {})  # no IP by default
    assert page.kind == "page"
    assert response.cookies["cio_anonymous_id"].value == ""  # spent: deleted


def test_ip_and_user_agent_only_when_asked(client, cio, settings):
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "TRACK_IP": True}
    User.objects.create(username="ada")
    client.get("/login/", {"username": "ada"}, HTTP_USER_AGENT="pytest")
    (login,) = [op for op in cio if getattr(op, "name", None) == "login"]
    assert login.data == {"ip": "127.0.0.1", "user_agent": "pytest"}


def test_logout_is_tracked_and_auth_signals_can_be_off(client, cio, settings):
    user = User.objects.create(username="ada")
    client.force_login(user)
    cio.clear()
    client.get("/logout/")
    assert ("event", "logout") in summary(cio)
    settings.CUSTOMERIO = {**settings.CUSTOMERIO, "AUTH_SIGNALS": False, "PAGE_VIEWS": False}
    cio.clear()
    client.force_login(user)
    client.get("/logout/")
    assert cio == []


def test_request_cio_tracks_the_logged_in_user(client, cio):
    user = User.objects.create(username="ada")
    client.force_login(user)
    cio.clear()
    client.get("/pricing/")
    assert [(op.kind, op.person_id) for op in cio] == [("event", str(user.pk)),
                                                       ("page", str(user.pk))]


def test_asgi_requests_work_too(async_client, cio):
    response = async_to_sync(async_client.get)("/async/")
    assert response.status_code == 200
    assert summary(cio) == [("anonymous_event", "event"), ("anonymous_event", "page")]


def test_a_logged_in_async_view_can_track_directly(async_client, client, cio):
    user = User.objects.create(username="ada")
    client.force_login(user)  # a real session cookie, as a browser would send
    async_client.cookies = client.cookies
    response = async_to_sync(async_client.get)("/async-direct/")
    assert response.status_code == 200
    assert [(op.name, op.person_id) for op in cio if op.kind == "event"][-1] == (
        "async_direct", str(user.pk)
    )


@pytest.mark.parametrize("cookie", [".", "x" * 200, "not-hex-not-ours-0000000000000000"])
def test_a_forged_anonymous_cookie_is_replaced_not_fatal(client, cio, cookie):
    client.cookies["cio_anonymous_id"] = cookie
    response = client.get("/pricing/")
    assert response.status_code == 200
    assert response.cookies["cio_anonymous_id"].value != cookie
    assert {op.anonymous_id for op in cio} == {response.cookies["cio_anonymous_id"].value}


def test_page_views_leave_out_the_query_and_a_bad_one_never_fails_the_page(client, cio, caplog):
    client.get("/quiet/", {"email": "secret@example.com"})
    assert cio[0].name == "http://testserver/quiet/"
    response = client.get("/" + "a" * 1100)  # a 404: no page view anyway
    assert response.status_code == 404
    assert "secret" not in caplog.text


def test_login_respects_should_track(client, cio, settings):
    import django_cio
    from django_cio.registry import registry

    @django_cio.register(User)
    class OnlyCustomers(django_cio.Customer):
        fields = ["email"]

        def should_track(self, user):
            return not user.is_staff

    try:
        User.objects.create(username="admin", is_staff=True, email="boss@example.com")
        cio.clear()
        client.get("/login/", {"username": "admin"})
        assert [op for op in cio if op.kind in ("identify", "event")] == []
    finally:
        registry.unregister(User)


def test_a_failing_login_hook_never_fails_the_login(client, cio, caplog):
    import django_cio
    from django_cio.registry import registry

    @django_cio.register(User)
    class Broken(django_cio.Customer):
        def get_attributes(self, user):
            raise RuntimeError("secret@example.com")

    try:
        User.objects.create(username="ada")
        response = client.get("/login/", {"username": "ada"})
    finally:
        registry.unregister(User)
    assert response.status_code == 200
    assert "login not sent (RuntimeError)" in caplog.text and "secret" not in caplog.text


def test_page_by_keyword_still_names_the_page(rf, cio):
    from django.contrib.auth.models import AnonymousUser

    from django_cio.middleware import RequestTracker

    request = rf.get("/somewhere/")
    request.user = AnonymousUser()
    RequestTracker(request).page(url="https://shop.example/cart", title="Cart")
    assert cio[0].name == "https://shop.example/cart" and cio[0].data == {"title": "Cart"}


def test_identify_without_a_logged_in_user_names_the_field(rf, cio):
    from django.contrib.auth.models import AnonymousUser

    from django_cio.exceptions import ValidationError
    from django_cio.middleware import RequestTracker

    request = rf.get("/")
    request.user = AnonymousUser()
    with pytest.raises(ValidationError, match="identify: person_id is unknown"):
        RequestTracker(request).identify(plan="pro")
    assert cio == []


def test_a_view_that_fails_after_commit_still_sends_the_committed_ops(client, published):
    with pytest.raises(RuntimeError):
        client.get("/failing/")
    assert [[op["name"] for op in message] for message in published] == [
        ["committed_before_the_error"]]


def test_a_cancelled_async_request_still_sends_its_committed_ops(published, rf):
    # A client that disconnects cancels the ASGI request: what it committed still goes out.
    committed = asyncio.Event()

    async def view(request):
        await sync_to_async(commit_an_op)()
        committed.set()
        await asyncio.sleep(60)

    def commit_an_op():
        with transaction.atomic():
            django_cio.track("u1", "committed_then_cancelled")
        connection.close()  # a thread of asgiref's: the test database is dropped at the end

    async def main():
        request = rf.get("/")
        request.auser = _anonymous
        handling = asyncio.create_task(CustomerIOMiddleware(view)(request))
        await committed.wait()
        handling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handling

    asyncio.run(main())
    assert [[op["name"] for op in message] for message in published] == [
        ["committed_then_cancelled"]]


async def _anonymous():
    return AnonymousUser()


def test_asgi_without_the_auth_middleware_tracks_anonymously_and_is_checked(
        async_client, cio, settings):
    settings.MIDDLEWARE = ["django_cio.middleware.CustomerIOMiddleware"]
    response = async_to_sync(async_client.get)("/async/")
    assert response.status_code == 200
    assert [op.name for op in cio] == ["async_viewed", "http://testserver/async/"]
    assert [message.id for message in check_middleware()] == ["django_cio.W004"]
    settings.MIDDLEWARE = [*settings.MIDDLEWARE,
                           "django.contrib.auth.middleware.AuthenticationMiddleware"]
    assert [message.id for message in check_middleware()] == ["django_cio.W004"]


def test_a_login_during_an_async_request_is_seen_by_request_cio(async_client, cio):
    user = User.objects.create(username="ada")
    async_to_sync(async_client.get)("/async-login/", {"username": "ada"})
    assert ("event", "after_login") in summary(cio)
    after_login = next(op for op in cio if getattr(op, "name", None) == "after_login")
    assert after_login.person_id == str(user.pk)
