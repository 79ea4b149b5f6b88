"""The operator's HTTP server: /healthz (the tick loop is alive), /readyz (the database
answers and the schema is at head), /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watchdog.metrics import Metrics

log = structlog.get_logger("watchdog.health")
READY_TIMEOUT = 5.0


class HealthServer:
    """Serves the three endpoints; ``port`` is the bound one once started."""

    def __init__(
        self,
        *,
        alive: Callable[[datetime], bool],
        ready: Callable[[], Awaitable[tuple[bool, str]]],
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
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

    async def _metrics_text(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self._refresh(), READY_TIMEOUT)
        except Exception as exc:  # stale gauges beat no metrics at all
            log.warning("metrics_refresh_failed", error=type(exc).__name__)
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
