"""The operator's HTTP server: /healthz (the tick loop is alive), /readyz (the database
answers and the schema is at head), /metrics (Prometheus text), and / (the status page;
off loopback only with the token)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watchdog.clock import utcnow
from watchdog.daemon.access import Access
from watchdog.daemon.metrics import Metrics
from watchdog.views.page import PAGE_HEADERS

if TYPE_CHECKING:
    from watchdog.daemon.actions import PageActions
    from watchdog.daemon.api import Api

log = structlog.get_logger("watchdog.health")
READY_TIMEOUT = 5.0
T = TypeVar("T")


class Bounded(Generic[T]):
    """One read at a time in a task of its own, which a caller waits for at most
    ``timeout``: a database that holds a read (a locked SQLite file waits out its busy
    timeout in a thread) makes the caller late by that bound, not by the lock. A read
    still running is joined by the next caller instead of started again."""

    def __init__(self, read: Callable[[], Awaitable[T]], timeout: float = READY_TIMEOUT) -> None:
        self._read = read
        self.timeout = timeout
        self._task: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._read())
        # shield: the timeout gives up waiting, it does not wait for the read to stop
        return await asyncio.wait_for(asyncio.shield(self._task), self.timeout)

    async def close(self) -> None:
        """Stop a read still running (at shutdown, before the database is closed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class HealthServer:
    """Serves the three endpoints; ``port`` is the bound one once started."""

    def __init__(
        self,
        *,
        alive: Callable[[datetime], bool],
        ready: Callable[[], Awaitable[tuple[bool, str]]],
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]],
        page: Callable[[], Awaitable[str]] | None = None,
        access: Access | None = None,
        api: Api | None = None,
        actions: PageActions | None = None,
    ) -> None:
        self._page = None if page is None else Bounded(page)
        self._access = access or Access([], guarded=False)
        self._api = api
        self._actions = actions
        self._alive = alive
        self._ready = Bounded(ready)
        self._metrics = metrics
        self._refresh = Bounded(refresh)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        if self._page is not None:
            app.router.add_get("/", self._status_page)
        if self._api is not None:
            self._api.add_routes(app)
            app.router.add_get("/batches/{provider}/{batch_id}", self._batch_page)
        if self._actions is not None:
            self._actions.add_routes(app)
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        log.info("http_listening", host=host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for read in (self._ready, self._refresh, self._page):
            if read is not None:
                await read.close()

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._alive(utcnow()):
            return web.Response(text="ok\n")
        return web.Response(status=503, text="tick loop stalled\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ok, detail = await self._ready()
        except TimeoutError:
            ok, detail = False, f"database did not answer within {READY_TIMEOUT:g}s"
        if ok:
            return web.Response(text=f"ready{f' ({detail})' if detail else ''}\n")
        return web.Response(status=503, text=f"not ready: {detail}\n")

    async def _status_page(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        assert self._page is not None
        try:
            html = await self._page()
        except Exception as exc:  # no snapshot yet, or a bug: say so, do not crash
            log.warning("status_page_failed", error=type(exc).__name__)
            return web.Response(status=503, text="status unavailable: no snapshot yet\n")
        if self._actions is not None and (forms := self._actions.page_forms(request)):
            html = html.replace("</main>", forms + "</main>", 1)
        return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)

    def _forms(self, request: web.Request, provider: str, batch_id: str, exempt: bool) -> str:
        if self._actions is None:
            return ""
        return self._actions.batch_forms(request, provider, batch_id, exempt)

    async def _batch_page(self, request: web.Request) -> web.Response:
        """A batch's own page, guarded as the status page is."""
        if (refused := self._refused(request)) is not None:
            return refused
        assert self._api is not None
        info = request.match_info
        try:
            forms = partial(self._forms, request, info["provider"], info["batch_id"])
            html = await self._api.batch_html(info["provider"], info["batch_id"], forms)
        except web.HTTPException:
            raise
        except Exception as exc:  # the database away, or a bug: say so, do not crash
            log.warning("batch_page_failed", error=type(exc).__name__)
            return web.Response(status=503, text="batch page unavailable\n")
        if html is None:
            return web.Response(status=404, text="not tracked\n")
        return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)

    def _refused(self, request: web.Request) -> web.Response | None:
        """Off loopback, the page needs a session (``/login``) or a token in the header,
        any role's — never in the URL, where logs and histories keep it; with no token
        configured it is not served there."""
        if not self._access.guarded:
            return None
        if self._actions is not None and self._actions.sessions.caller(request) is not None:
            return None  # logged in (a session cookie, sent only by this site's pages)
        if not self._access.configured:
            return web.Response(
                status=403, text="set http.tokens (or http.token_env) to serve / off loopback\n"
            )
        try:
            self._access.caller(request, write=False)
        except web.HTTPException:
            return web.Response(
                status=401, text="token required\n", headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    async def _metrics_text(self, request: web.Request) -> web.Response:
        try:
            await self._refresh()
        except Exception as exc:  # stale gauges beat no metrics at all
            log.warning("metrics_refresh_failed", error=type(exc).__name__)
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
