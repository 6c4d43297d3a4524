from django.contrib.auth import authenticate, get_user_model, login
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import django_cio
from django_cio.loadtest import loadtest_person

from .models import Order


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("<html><h1>Example shop</h1></html>")


def pricing(request: HttpRequest) -> HttpResponse:
    request.cio.track("viewed_pricing")  # the user, or the anonymous visitor
    return HttpResponse("<html><h1>Pricing</h1></html>")


@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():  # the identify and the welcome email leave when this commits
        user = get_user_model().objects.create_user(
            username=request.POST["email"], email=request.POST["email"],
            first_name=request.POST.get("first_name", ""), password=request.POST["password"],
        )
        send_mail("Welcome to the shop", f"Hi {user.first_name},\n\nthanks for joining.",
                  None, [user.email])
    return HttpResponse("<html>Welcome!</html>", status=201)


@require_POST
def sign_in(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST["email"],
                        password=request.POST["password"])
    if user is None:
        return HttpResponseBadRequest("wrong email or password")
    login(request, user)  # identify (with the anonymous id) + a "login" event
    return HttpResponse("<html>Signed in</html>")


@require_POST
def place_order(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponseBadRequest("sign in first")
    with transaction.atomic():
        Order.objects.create(user=request.user, total=request.POST["total"])
    return HttpResponse("<html>Thanks for your order</html>", status=201)


# Driven by ``manage.py cio_loadtest``: each simulated visitor names its person id (tagged with
# the run's prefix, so ``--cleanup`` can delete it) in a header. Their ops take the path of any
# view's: validated now, one message per request after the transaction commits, then workers.


@csrf_exempt
@require_POST
def loadtest_signup(request: HttpRequest) -> HttpResponse:
    person = loadtest_person(request)
    if person is None:
        return HttpResponseBadRequest("load test requests only")
    with transaction.atomic():
        django_cio.identify(person, email=f"{person}@example.invalid", first_name="Load")
        django_cio.track(person, "signed_up", plan="free")
    return HttpResponse("Welcome!", status=201, content_type="text/plain")


@csrf_exempt
@require_POST
def loadtest_order(request: HttpRequest) -> HttpResponse:
    person = loadtest_person(request)
    if person is None:
        return HttpResponseBadRequest("load test requests only")
    with transaction.atomic():
        django_cio.track(person, "order_placed", total="9.99")
    return HttpResponse("Thanks for your order", status=201, content_type="text/plain")
