"""Acting from the page: log in with a token (a session cookie), and an operator's forms
— exempt, unexempt, cancel now, untrack, resume — posted with the session's CSRF field
and carried out by the API's own writes (the same events: actor and reason)."""

from __future__ import annotations

from urllib.parse import quote

import structlog
from aiohttp import web

from watchdog.daemon.api import PREFIX, Api
from watchdog.daemon.sessions import COOKIE, Sessions
from watchdog.views.batchpage import actions_html, login_html, resume_html
from watchdog.views.page import PAGE_HEADERS

log = structlog.get_logger("watchdog.api")
ACTIONS = ("exempt", "unexempt", "cancel", "untrack")


class PageActions:
    """The login and the forms' routes, and the forms a page shows its viewer."""

    def __init__(self, api: Api, sessions: Sessions) -> None:
        self.api, self.sessions = api, sessions

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_post("/actions/batches/{provider}/{batch_id}/{action}", self._act)
        app.router.add_post("/actions/resume", self._resume)

    def batch_forms(self, request: web.Request, provider: str, batch_id: str, exempt: bool) -> str:
        """The forms of a batch's page, for an operator's session only."""
        if not self._operator(request):
            return ""
        return actions_html(provider, batch_id, self.sessions.csrf(request), exempt)

    def page_forms(self, request: web.Request) -> str:
        return resume_html(self.sessions.csrf(request)) if self._operator(request) else ""

    def _operator(self, request: web.Request) -> bool:
        caller = self.sessions.caller(request)
        return caller is not None and caller.role == "operator"

    async def _login_form(self, request: web.Request) -> web.Response:
        return _html(login_html())

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        response = web.HTTPSeeOther("/")
        caller = self.sessions.login(str(form.get("token", "")), response, request.secure)
        if caller is None:
            return _html(login_html(failed=True), status=401)
        log.info("page_login", actor=caller.name, role=caller.role)
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _act(self, request: web.Request) -> web.Response:
        info = request.match_info
        action, provider, batch_id = info["action"], info["provider"], info["batch_id"]
        if action not in ACTIONS:
            raise web.HTTPNotFound(text=f"no action {action!r}\n")
        path = f"/batches/{{provider}}/{{batch_id}}/{action}"
        status = await self._carry_out(request, path)
        back = "/" if action == "untrack" and status < 300 else (
            f"/batches/{quote(provider)}/{quote(batch_id)}")  # fmt: skip
        raise web.HTTPSeeOther(back)

    async def _resume(self, request: web.Request) -> web.Response:
        await self._carry_out(request, "/resume")
        raise web.HTTPSeeOther("/")

    async def _carry_out(self, request: web.Request, path: str) -> int:
        """The API's write for ``path`` with the form's fields, as the session's operator."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        caller = self.sessions.acting(request, form)
        reason = form.get("reason", "").strip()
        if not reason or len(reason) > 500:
            raise web.HTTPBadRequest(text="say why, in at most 500 characters\n")
        said = {"actor": caller.name, "reason": reason}
        status, answer = await self.api.writes()[path](request, form, said)
        log.info("api_write", path=PREFIX + path, status=status, via="page", **said)
        if status >= 400:
            raise web.HTTPBadRequest(text=f"{answer.get('error', 'refused')}\n")
        return status


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=PAGE_HEADERS)
