from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.auth import login, logout
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.urls import path

import django_cio
from tests.models import Order


def page(request):
    request.cio.track("viewed_pricing", plan="pro")
    return HttpResponse("<html>pricing</html>")


def quiet_page(request):
    return HttpResponse("<html>nothing tracked</html>")


def api(request):
    return JsonResponse({"ok": True})


def sign_in(request):
    login(request, User.objects.get(username=request.GET["username"]))
    return HttpResponse("<html>welcome</html>")


def sign_out(request):
    logout(request)
    return HttpResponse("<html>bye</html>")


def order(request):
    with transaction.atomic():
        Order.objects.create(user=request.user, total=10)
        request.cio.track("checkout_done")
    return HttpResponse("<html>thanks</html>")


def signup(request):
    """A user and a signup event: what a busy site does all day."""
    with transaction.atomic():
        user = User.objects.create(username=request.GET["username"])
        django_cio.identify(str(user.pk), email=f"{user.username}@example.com")
        django_cio.track(str(user.pk), "signed_up", source="web")
    return HttpResponse("<html>welcome</html>")


async def async_page(request):
    await sync_to_async(request.cio.track)("async_viewed")
    return HttpResponse("<html>async</html>")


async def async_direct(request):
    request.cio.track("async_direct")  # no sync_to_async: the tracker knows the user already
    return HttpResponse("<html>async</html>")


def failing_after_commit(request):
    with transaction.atomic():
        django_cio.track("u1", "committed_before_the_error")
    raise RuntimeError("the view fails after its transaction committed")


async def async_login(request):
    user = await User.objects.aget(username=request.GET["username"])
    await sync_to_async(login)(request, user)  # alogin is Django 5.0+
    request.cio.track("after_login")
    return HttpResponse("<html>welcome</html>")


urlpatterns = [
    path("failing/", failing_after_commit),
    path("async-login/", async_login),
    path("async-direct/", async_direct),
    path("admin/", admin.site.urls),
    path("pricing/", page),
    path("quiet/", quiet_page),
    path("static/app.css", quiet_page),
    path("api/", api),
    path("login/", sign_in),
    path("logout/", sign_out),
    path("order/", order),
    path("signup/", signup),
    path("async/", async_page),
]
