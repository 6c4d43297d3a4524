"""Models of the test project, for the registry's tests."""

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.utils import timezone


class Order(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    total = models.DecimalField(max_digits=8, decimal_places=2)
    status = models.CharField(max_length=20, default="new")
    placed_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"Order {self.pk}"


class RushOrder(Order):
    """A proxy of Order: its saves fire Order's events."""

    class Meta:
        proxy = True


class Member(User):
    """A proxy: saves through it are sent with its own registration, else User's."""

    class Meta:
        proxy = True


class Timestamped(models.Model):
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True


class Note(Timestamped):
    text = models.TextField()

    def __str__(self):
        return f"Note {self.pk}"


class Company(models.Model):
    """An object (type 1) that people belong to."""

    name = models.CharField(max_length=100)
    plan = models.CharField(max_length=20, default="free")

    def __str__(self):
        return self.name


class Employee(models.Model):
    """A person who belongs to a company, in a role."""

    email = models.EmailField()
    company = models.ForeignKey(Company, null=True, on_delete=models.SET_NULL)
    role = models.CharField(max_length=20, default="member")

    def __str__(self):
        return f"Employee {self.pk}"


class Team(models.Model):
    """A group whose members make up a manual segment."""

    name = models.CharField(max_length=100)
    cio_segment_id = models.IntegerField(null=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams")

    def __str__(self):
        return self.name
