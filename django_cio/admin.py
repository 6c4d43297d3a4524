from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from .delivery.dead_letters import replay
from .delivery.messages import MAY_HAVE_BEEN_SENT
from .models import BackfillRun, DeadLetter, Outbox, SentMessage
from .privacy import redacted, safe_label


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["kind", "workspace", "person_id", "reason", "status", "attempts",
                    "last_failed_at"]
    list_filter = ["workspace", "kind", "reason", "status"]
    search_fields = ["person_id"]
    date_hierarchy = "last_failed_at"
    # The op is shown redacted, in place of its field.
    readonly_fields = [
        "operation" if field.name == "op" else field.name for field in DeadLetter._meta.fields
    ]
    fields = tuple(readonly_fields)
    actions = ["replay", "replay_messages_that_may_have_been_sent"]

    @admin.display(description="operation (keys and value types)")
    def operation(self, letter: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(redacted(letter.op), indent=2))

    @admin.action(description="Replay: queue the selected operations again")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        # A selection is a sweep: a message that may have been sent is resent only on purpose.
        count = replay(queryset.exclude(reason__startswith=MAY_HAVE_BEEN_SENT))
        self.message_user(request, f"{count} operation(s) queued again.", messages.SUCCESS)

    @admin.action(description="Replay transactional messages that may have been sent (after "
                  "checking in Customer.io that they were not)")
    def replay_messages_that_may_have_been_sent(self, request: HttpRequest,
                                                queryset: QuerySet[DeadLetter]) -> None:
        count = replay(queryset.filter(reason__startswith=MAY_HAVE_BEEN_SENT))
        self.message_user(request, f"{count} message(s) queued again.", messages.SUCCESS)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Outbox)
class OutboxAdmin(admin.ModelAdmin):
    list_display = ["id", "workspace", "created_at", "not_before", "failures"]
    list_filter = ["workspace"]
    # The ops are shown as counts by kind, in place of their field (their values are PII).
    readonly_fields = [
        "operations" if field.name == "ops" else field.name for field in Outbox._meta.fields
    ]
    fields = tuple(readonly_fields)

    @admin.display(description="operations")
    def operations(self, row: Outbox) -> str:
        ops = row.ops if isinstance(row.ops, list) else [row.ops]
        kinds = Counter(op.get("kind") if isinstance(op, dict) else None for op in ops)
        return ", ".join(f"{count} {safe_label(str(kind))}" for kind, count in kinds.most_common())

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


@admin.register(SentMessage)
class SentMessageAdmin(admin.ModelAdmin):
    """Which transactional messages went out: ids, kinds and states, never an address."""

    list_display = ["id", "kind", "workspace", "state", "delivery_id", "created_at", "sent_at"]
    list_filter = ["state", "kind", "workspace"]
    search_fields = ["id", "delivery_id"]
    readonly_fields = [field.name for field in SentMessage._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a deleted claim would let a redelivered copy go out again
