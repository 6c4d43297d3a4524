"""How delivery is doing, as data: per workspace, the delivery queue, the Outbox, dead letters,
transactional messages, the shared rate limiter, refused credentials and an API not
answering; then identify dedup and backfill runs (``cio_status``, and the load test's wait for
an empty queue)."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.db.models import Count, Min
from django.utils import timezone

from . import dedup, outage
from .broker.redis import on_redis, prefixed, queue_lists
from .broker.relay import databases
from .client import TrackClient
from .conf import DEFAULT_WORKSPACE, get_settings
from .credentials import refusal
from .exceptions import APIError
from .models import BackfillRun, DeadLetter, Outbox, SentMessage
from .ratelimit import get_limiter


def status() -> dict[str, Any]:
    """Everything ``cio_status`` shows (``--json`` prints this): a section per workspace."""
    return {
        "workspaces": {name: workspace_status(name)
                       for name in get_settings().workspace_names},
        "dedup": dedup.counters(), "backfills": backfill_status(),
    }


def workspace_status(workspace: str = DEFAULT_WORKSPACE) -> dict[str, Any]:
    """One workspace's queue, Outbox, dead letters, limiter and health (no credentials)."""
    config = get_settings(workspace)
    return {
        "queue": queue_status(workspace), "outbox": outbox_status(workspace),
        "dead_letters": dead_letter_status(workspace),
        "messages": message_status(workspace),
        "rate_limiter": {"rate": config.rate_limit, **get_limiter(workspace).state()},
        "credentials_refused": refusal(config), "not_answering": outage.not_answering(config),
    }


def queue_status(workspace: str = DEFAULT_WORKSPACE) -> dict[str, Any]:
    """A workspace's delivery queue on the broker this process publishes to (its URL without
    the password): messages waiting and, where the broker counts them, consumers."""
    name = get_settings(workspace).queue
    with current_app.connection_for_read(connect_timeout=2) as connection:
        status: dict[str, Any] = {"name": name, "broker": connection.as_uri()}
        try:
            channel = connection.default_channel
            if on_redis(channel):  # an empty queue is no key at all
                with channel.conn_or_acquire() as client:
                    lists = prefixed(channel, list(queue_lists(channel, [name])))
                    return {**status, "messages": sum(client.llen(key) for key in lists),
                            "consumers": None}
            _, messages, consumers = channel.queue_declare(name, passive=True)
        except Exception as exc:  # a down broker or a missing queue is a status too
            return {**status, "error": type(exc).__name__}
    return {**status, "messages": messages, "consumers": consumers}


def outbox_status(workspace: str = DEFAULT_WORKSPACE) -> dict[str, Any]:
    now = timezone.now()
    messages = due = 0
    oldest = None
    for alias in databases():
        rows = Outbox.objects.using(alias).filter(workspace=workspace)
        stats = rows.aggregate(count=Count("id"), oldest=Min("created_at"))
        messages += stats["count"]
        due += rows.filter(not_before__lte=now).count()
        if stats["oldest"] and (oldest is None or stats["oldest"] < oldest):
            oldest = stats["oldest"]
    age = round((now - oldest).total_seconds(), 1) if oldest else 0
    return {"messages": messages, "due": due, "oldest_age_seconds": age}


def message_status(workspace: str = DEFAULT_WORKSPACE) -> dict[str, int]:
    """Transactional messages sent, and claimed for a request not answered yet (in flight, or
    left by a worker that died: those become dead letters when they come back)."""
    rows = (SentMessage.objects.filter(workspace=workspace).values("state")
            .annotate(count=Count("id")))
    counts = {row["state"]: row["count"] for row in rows}
    return {"sent": counts.get(SentMessage.SENT, 0), "sending": counts.get(SentMessage.SENDING, 0)}


def dead_letter_status(workspace: str = DEFAULT_WORKSPACE) -> dict[str, Any]:
    rows = (DeadLetter.objects.filter(workspace=workspace).values("reason")
            .annotate(count=Count("id")).order_by("-count"))
    by_reason = {row["reason"]: row["count"] for row in rows}
    return {"total": sum(by_reason.values()), "by_reason": by_reason}


def backfill_status(latest: int = 5) -> list[dict[str, Any]]:
    """The unfinished backfill runs and the latest few."""
    runs = BackfillRun.objects.exclude(status=BackfillRun.DONE)[:20]
    recent = BackfillRun.objects.filter(status=BackfillRun.DONE)[:latest]
    return [{"id": run.pk, "model": run.model, "status": run.status, "total": run.total,
             "done": run.sent + run.skipped + run.failed, "sent": run.sent,
             "failed": run.failed, "updated_at": run.updated_at.isoformat()}
            for run in [*runs, *recent]]


def check_accounts() -> list[dict[str, Any]]:
    """Ask Customer.io, per workspace, what its credentials are (``GET
    /api/v1/accounts/region``): whether they are accepted, their region and workspace id, and
    what is wrong (a region other than ``REGION``, two names for one workspace)."""
    checked: list[dict[str, Any]] = []
    names: dict[Any, str] = {}
    for workspace in get_settings().workspace_names:
        config = get_settings(workspace)
        account: dict[str, Any] = {"workspace": workspace, "problems": []}
        checked.append(account)
        if not config.site_id or not config.api_key:
            account["problems"].append("no SITE_ID/API_KEY")
            continue
        try:
            answer = TrackClient.from_settings(config).region()
        except APIError as exc:
            refused = exc.status in (401, 403)
            account["problems"].append(f"Customer.io refuses its credentials (HTTP {exc.status})"
                                       if refused else f"cannot ask Customer.io ({exc})")
            continue
        account.update(region=answer["region"], environment_id=answer["environment_id"])
        if answer["region"] != config.region:
            account["problems"].append(
                f"its credentials belong to region {answer['region']!r}, not REGION "
                f"{config.region!r}: set REGION to {answer['region']!r} (data sent to another "
                "region's host passes through that region's servers, or is refused)")
        twin = names.setdefault(answer["environment_id"], workspace)
        if twin != workspace:
            account["problems"].append(f"the same Customer.io workspace as {twin!r}: one "
                                       "workspace under two names shares its limit and data")
    return checked
