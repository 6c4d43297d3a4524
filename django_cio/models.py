"""What django-cio keeps in the database: messages waiting for the broker, dead letters, and
the transactional messages it has sent (so that none is sent twice)."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


class Outbox(models.Model):
    """A queued message that is not on the broker (yet).

    The producer writes one when the broker is unreachable, and the delivery task parks a retry
    here when its wait is too long for a broker countdown. The relay publishes rows once
    ``not_before`` has passed.
    """

    ops = models.JSONField(help_text="The operations, as Operation.to_dict() gives them.")
    failures = models.PositiveIntegerField(
        default=0, help_text="Transient failures so far, counted against MAX_RETRIES."
    )
    workspace = models.CharField(max_length=40, default="default", db_index=True,
                                 help_text="The Customer.io workspace its ops go to.")
    created_at = models.DateTimeField(default=timezone.now)
    not_before = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "outbox message"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Outbox #{self.pk}: {len(self.ops)} op(s), due {self.not_before:%Y-%m-%d %H:%M:%S}"


class DeadLetter(models.Model):
    """An operation Customer.io refused or that ran out of retries; ``cio_replay`` resends it."""

    op = models.JSONField(help_text="The operation, as Operation.to_dict() gives it.")
    kind = models.CharField(max_length=32, db_index=True)
    workspace = models.CharField(max_length=40, default="default", db_index=True,
                                 help_text="The Customer.io workspace it was for.")
    person_id = models.CharField(max_length=200, blank=True, db_index=True)
    reason = models.CharField(max_length=200, db_index=True)
    status = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="HTTP status of the last answer; empty for no answer."
    )
    attempts = models.PositiveIntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-last_failed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} dead letter #{self.pk}: {self.reason}"

    @classmethod
    def for_op(cls, op: dict[str, Any], **fields: Any) -> DeadLetter:
        kind = op.get("kind")
        person = op.get("person_id") or op.get("primary") or op.get("anonymous_id")
        if str(kind).startswith("send_") and op.get("id_type") == "email":
            person = None  # a message's recipient address is PII the admin never shows
        workspace = op.get("workspace")
        return cls(op=op, kind=str(kind)[:32] if kind else "unknown",
                   workspace=str(workspace)[:40] if workspace else "default",
                   person_id=str(person)[:200] if person else "", **fields)


class BackfillRun(models.Model):
    """One ``cio_backfill`` of a model: its filters and how far it got (checkpointed after
    every batch Customer.io acknowledged, so ``--resume`` continues from there)."""

    RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"
    STOPPING = "stopping"  # asked to stop (--stop); its process has not yet

    model = models.CharField(max_length=200, help_text="app_label.Model")
    filters = models.JSONField(default=dict)
    ids_file = models.CharField(max_length=1000, blank=True,
                                help_text="Only the primary keys listed in this file.")
    options = models.JSONField(default=dict, help_text="batch_size, rate_share, dedup.")
    last_pk = models.JSONField(null=True, blank=True, help_text="Last row acknowledged.")
    ids_done = models.PositiveBigIntegerField(
        default=0, help_text="Lines of the ids file acknowledged.")
    ranges = models.JSONField(
        null=True, blank=True,
        help_text="--async: [last pk acknowledged, last pk] of each range Celery tasks send.")
    total = models.PositiveBigIntegerField(default=0)
    sent = models.PositiveBigIntegerField(default=0)
    skipped = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=10, default=RUNNING, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"Backfill #{self.pk} of {self.model}: {self.status}"


class SentMessage(models.Model):
    """A transactional message's claim to be sent once, by its id: ``sending`` from just
    before its request leaves, ``sent`` once Customer.io has taken it (with its
    ``delivery_id``). A message found ``sending`` again may have gone out: it is not resent
    but dead-lettered for review. Holds ids only, never an address or a body."""

    SENDING, SENT = "sending", "sent"

    id = models.CharField(max_length=26, primary_key=True, help_text="The message's ULID.")
    kind = models.CharField(max_length=32)
    workspace = models.CharField(max_length=40, default="default")
    state = models.CharField(max_length=8, choices=[(SENDING, "sending"), (SENT, "sent")],
                             default=SENDING, db_index=True)
    delivery_id = models.CharField(max_length=200, blank=True,
                                   help_text="Customer.io's id of the delivery.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.id}: {self.state}"
