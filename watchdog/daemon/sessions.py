"""Logging in to the page with a token: a session in a cookie that the browser sends
only to this site (HttpOnly, SameSite=Strict) and a per-session CSRF field in every
form, so that no other site can make a logged-in browser act."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from aiohttp import web

from watchdog.daemon.access import Access, Caller

COOKIE = "wd_session"
LIFE = timedelta(hours=8)


class Sessions:
    """The logged-in browsers of this replica (in memory: a restart logs them out)."""

    def __init__(self, access: Access, clock: Callable[[], datetime]) -> None:
        self.access, self.clock = access, clock
        self._key = secrets.token_bytes(32)  # signs the CSRF fields
        self._open: dict[str, tuple[Caller, datetime]] = {}

    def login(self, token: str, response: web.StreamResponse, secure: bool) -> Caller | None:
        """A known token opens a session (its cookie set on ``response``); None else."""
        caller = self.access.named(token)
        if caller is None:
            return None
        now = self.clock()
        self._open = {s: v for s, v in self._open.items() if v[1] > now}  # forget the old
        sid = secrets.token_urlsafe(32)
        self._open[sid] = (caller, now + LIFE)
        response.set_cookie(COOKIE, sid, max_age=int(LIFE.total_seconds()), path="/",
                            httponly=True, samesite="Strict", secure=secure)  # fmt: skip
        return caller

    def caller(self, request: web.Request) -> Caller | None:
        """Who the request's session is, if it has a live one."""
        sid = request.cookies.get(COOKIE)
        found = None if sid is None else self._open.get(sid)
        if found is None or found[1] <= self.clock():
            return None
        return found[0]

    def csrf(self, request: web.Request) -> str:
        """The CSRF field this session's forms carry."""
        sid = request.cookies.get(COOKIE, "")
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def acting(self, request: web.Request, form: dict[str, str]) -> Caller:
        """The operator a form was posted by: a live session, an operator's, and the
        form's CSRF field (403 otherwise: a cross-site post has neither)."""
        caller = self.caller(request)
        given = form.get("csrf", "")
        if caller is None or not hmac.compare_digest(given, self.csrf(request)):
            raise web.HTTPForbidden(text="log in again (the form's session is not this one)\n")
        if caller.role != "operator":
            raise web.HTTPForbidden(text=f"{caller.name!r} is a viewer: actions need an operator\n")
        return caller
