"""One message per request, ``request.cio``, anonymous visitors and page views.

``CustomerIOMiddleware`` wraps each request in a ``batch()``: every op the request makes
(signals, views, committed ``ATOMIC_REQUESTS`` transactions) goes to the broker as one message
after the response is made. ``request.cio`` tracks for the logged-in user, or for the visitor's
anonymous id, kept in a cookie set only when something was tracked anonymously. With
``PAGE_VIEWS`` on, successful HTML GETs become page views (paths matching ``PAGE_VIEWS_SKIP``
excepted). Works under WSGI and ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty

from .conf import get_settings
from .exceptions import ValidationError
from .operations import AnonymousEvent, Event, Identify, Page, Person
from .privacy import safe_reason
from .producer import batch, collect, enqueue, flush
from .registry import person_id_for, workspace_for

_ONE_YEAR = 365 * 24 * 3600
_ANONYMOUS_ID = re.compile(r"[0-9a-f]{32}")
logger = logging.getLogger("django_cio")


class RequestTracker:
    """``request.cio``: Customer.io calls about whoever made the request."""

    def __init__(self, request: HttpRequest, user: Any = None) -> None:
        self.request = request
        self._user = user  # resolved beforehand under ASGI, where request.user can't load
        cookie = request.COOKIES.get(get_settings().anonymous_cookie, "")
        # Only ids this middleware made: a forged cookie must not fail the request later.
        self._anonymous_id = cookie if _ANONYMOUS_ID.fullmatch(cookie) else None
        self.anonymous_id_is_new = False
        self.forget_anonymous_id = False  # set at login: the id now belongs to a person

    @property
    def user(self) -> Any:
        """The logged-in user, or ``None`` for a visitor."""
        user = getattr(self.request, "user", None)
        if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
            # Not loaded yet: the user resolved beforehand (ASGI), else load it now. A login
            # or logout during the request replaces request.user, and that one counts.
            user = self._user if self._user is not None else user
        return user if user is not None and user.is_authenticated else None

    @property
    def person_id(self) -> str | Person | None:
        """The logged-in user's Customer.io id, or ``None`` for a visitor."""
        user = self.user
        return person_id_for(user) if user is not None else None

    @property
    def anonymous_id(self) -> str:
        """The visitor's anonymous id (made, and later set as a cookie, on first use)."""
        if self._anonymous_id is None:
            self._anonymous_id = uuid.uuid4().hex
            self.anonymous_id_is_new = True
        return self._anonymous_id

    @property
    def known_anonymous_id(self) -> str | None:
        """The anonymous id the visitor already had, if any (never makes one)."""
        return self._anonymous_id

    def track(self, name: str, /, **data: Any) -> None:
        user = self.user
        if user is not None:
            enqueue(Event(person_id_for(user), name, data, workspace=workspace_for(user)))  # type: ignore[arg-type]
        else:
            enqueue(AnonymousEvent(self.anonymous_id, name, data))

    def page(self, url: str | None = None, /, **data: Any) -> None:
        # page(url=...) still names the page. Without a URL, the request's path, without the
        # query string: it may hold emails, tokens, search terms.
        url = url or data.pop("url", None) or self.request.build_absolute_uri(self.request.path)
        user = self.user
        if user is not None:
            enqueue(Page(person_id_for(user), url, data, workspace=workspace_for(user)))  # type: ignore[arg-type]
        else:
            enqueue(AnonymousEvent(self.anonymous_id, url, data, type="page"))

    def identify(self, **attributes: Any) -> None:
        user = self.user
        if user is None:
            raise ValidationError("identify", "person_id",
                                  "is unknown: request.cio.identify() needs a logged-in user")
        enqueue(Identify(person_id_for(user), attributes, workspace=workspace_for(user)))  # type: ignore[arg-type]


class CustomerIOMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with batch():  # sent however the request ends: committed ops are never dropped
            request.cio = RequestTracker(request)  # type: ignore[attr-defined]
            response = self.get_response(request)
            self._after(request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        with collect() as ops:
            try:
                request.cio = RequestTracker(request, await _user(request))  # type: ignore[attr-defined]
                response = await self.get_response(request)
                await sync_to_async(self._after)(request, response)
            finally:
                if ops:  # also when the client disconnected and the request was cancelled:
                    # shielded, the ops its committed transactions made still go out.
                    await asyncio.shield(sync_to_async(flush)(list(ops)))
        return response

    def _after(self, request: HttpRequest, response: HttpResponseBase) -> None:
        config = get_settings()
        tracker: RequestTracker = request.cio  # type: ignore[attr-defined]
        if config.page_views and _is_page_view(request, response, config.page_views_skip):
            try:
                tracker.page()
            except Exception as exc:  # a page view must never fail the response
                logger.error("customerio: page view not sent (%s)", safe_reason(exc))
        if tracker.forget_anonymous_id:
            response.delete_cookie(config.anonymous_cookie)
        elif tracker.anonymous_id_is_new:
            response.set_cookie(config.anonymous_cookie, tracker.anonymous_id, max_age=_ONE_YEAR,
                                httponly=True, samesite="Lax", secure=request.is_secure())


def _is_page_view(request: HttpRequest, response: HttpResponseBase, skip: str) -> bool:
    return (
        request.method == "GET"
        and 200 <= response.status_code < 300
        and response.get("Content-Type", "").startswith("text/html")
        and not re.match(skip, request.path)
    )


async def _user(request: HttpRequest) -> Any:
    """The request's user, resolved in the async context (a ``RequestTracker`` cannot load it
    later); ``None`` without ``AuthenticationMiddleware`` before this one (the check says so),
    and then ``request.cio`` looks ``request.user`` up when it is used."""
    auser = getattr(request, "auser", None)
    if auser is not None:
        return await auser()
    user = getattr(request, "user", None)  # Django 4.2: no auser, a lazy user to load
    if isinstance(user, SimpleLazyObject):
        if user._wrapped is empty:
            await sync_to_async(user._setup)()
        return user._wrapped
    return user
