"""The operator's HTTP server: /healthz (the tick loop is alive), /readyz (the database
answers and the schema is at head), /metrics (Prometheus text), and / (the status page;
off loopback only with the token)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watchdog.metrics import Metrics

log = structlog.get_logger("watchdog.health")
READY_TIMEOUT = 5.0
# The page runs no script and loads nothing: say so to the browser too.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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
        token: str | None = None,
        guarded: bool = False,
    ) -> None:
        self._page = page
        self._token = token
        self._guarded = guarded  # not on loopback: the page asks for the token
        self._alive = alive
        self._ready = ready
        self._metrics = metrics
        self._refresh = refresh
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        if self._page is not None:
            app.router.add_get("/", self._status_page)
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

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._alive(datetime.now(UTC)):
            return web.Response(text="ok\n")
        return web.Response(status=503, text="tick loop stalled\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ok, detail = await asyncio.wait_for(self._ready(), READY_TIMEOUT)
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
            html = await asyncio.wait_for(self._page(), READY_TIMEOUT)
        except Exception as exc:  # the database may be away: say so, do not crash
            log.warning("status_page_failed", error=type(exc).__name__)
            return web.Response(
                status=503, text="status unavailable: the database did not answer\n"
            )
        return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)

    def _refused(self, request: web.Request) -> web.Response | None:
        """Off loopback, the page needs the token (Bearer, or ?token=), compared in
        constant time; with no token configured it is not served there at all."""
        if not self._guarded:
            return None
        if self._token is None:
            return web.Response(
                status=403, text="set http.token_env or http.token_file to serve / off loopback\n"
            )
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.query.get("token", "")
        if given and self._token and hmac.compare_digest(given.encode(), self._token.encode()):
            return None
        return web.Response(
            status=401, text="token required\n", headers={"WWW-Authenticate": "Bearer"}
        )

    async def _metrics_text(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self._refresh(), READY_TIMEOUT)
        except Exception as exc:  # stale gauges beat no metrics at all
            log.warning("metrics_refresh_failed", error=type(exc).__name__)
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
