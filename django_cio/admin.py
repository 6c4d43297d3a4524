from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from .models import BackfillRun, DeadLetter, DeadLetterQuerySet, Outbox


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["kind", "person_id", "reason", "status", "attempts", "last_failed_at"]
    list_filter = ["kind", "reason", "status"]
    search_fields = ["person_id"]
    date_hierarchy = "last_failed_at"
    readonly_fields = [field.name for field in DeadLetter._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay: queue the selected operations again")
    def replay(self, request: HttpRequest, queryset: DeadLetterQuerySet) -> None:
        count = queryset.replay()
        self.message_user(request, f"{count} operation(s) queued again.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Outbox)
class OutboxAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "not_before", "failures"]
    readonly_fields = [field.name for field in Outbox._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BackfillRun)
class BackfillRunAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "status", "total", "sent", "skipped", "failed", "started_at",
                    "updated_at"]
    list_filter = ["status", "model"]
    readonly_fields = [field.name for field in BackfillRun._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
