from django.contrib.auth import authenticate, get_user_model, login
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.http import require_POST

from .models import Order


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("<html><h1>Example shop</h1></html>")


def pricing(request: HttpRequest) -> HttpResponse:
    request.cio.track("viewed_pricing")  # the user, or the anonymous visitor
    return HttpResponse("<html><h1>Pricing</h1></html>")


@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():  # the identify leaves when this commits
        get_user_model().objects.create_user(
            username=request.POST["email"], email=request.POST["email"],
            first_name=request.POST.get("first_name", ""), password=request.POST["password"],
        )
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
