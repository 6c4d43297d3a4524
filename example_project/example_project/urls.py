from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", views.home),
    path("signup/", views.signup),
    path("login/", views.sign_in),
    path("orders/", views.place_order),
    path("pricing/", views.pricing),
    path("loadtest/signup/", views.loadtest_signup),  # for manage.py cio_loadtest
    path("loadtest/order/", views.loadtest_order),
]
