"""APScheduler wiring: one interval job runs the tick (coalesced, one at a time); a
failed tick is logged and the next one comes on time; shutdown drains, never cancels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = structlog.get_logger("watchdog.scheduler")


class TickLoop:
    """Runs ``tick`` every ``interval`` until ``stop`` is set."""

    def __init__(self, tick: Callable[[], Awaitable[Any]], interval: timedelta) -> None:
        self._tick = tick
        self._interval = interval
        self._inflight: asyncio.Task[Any] | None = None
        self.last_tick_finished: datetime | None = None
        self.failures = 0

    async def _guarded(self) -> None:
        self._inflight = asyncio.current_task()
        try:
            await self._tick()
            self.failures = 0
        except Exception as exc:  # the database or a bug: log it, keep the cadence
            self.failures += 1
            log.error(
                "tick_failed", error=f"{type(exc).__name__}: {exc}"[:500], consecutive=self.failures
            )
        finally:
            self.last_tick_finished = datetime.now(UTC)
            self._inflight = None

    async def run(self, stop: asyncio.Event, drain_timeout: float = 30.0) -> None:
        seconds = self._interval.total_seconds()
        scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": max(1, int(seconds)),
            },
        )
        scheduler.add_job(
            self._guarded, "interval", seconds=seconds, id="tick", next_run_time=datetime.now(UTC)
        )
        scheduler.start()
        try:
            await stop.wait()
        finally:
            scheduler.pause()
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                # Let in-flight cancels finish and record their outcome.
                await asyncio.wait([inflight], timeout=drain_timeout)
            scheduler.shutdown(wait=False)
