"""APScheduler wiring: one interval job runs the tick (coalesced, one at a time); a
failed tick is logged and the next one comes on time; shutdown drains, never cancels.
It also keeps the loop's liveness, which /healthz and the systemd watchdog read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdog.clock import utcnow
from watchdog.core.cadence import Cadence

log = structlog.get_logger("watchdog.scheduler")


async def stopped(*tasks: asyncio.Future[Any]) -> None:
    """Cancel the tasks and wait until they have ended. One cancelled mid-query gives
    its connection back while the database is still open; left to asyncio's teardown,
    after the engine was disposed, it waited for ever and the process never exited."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class TickLoop:
    """Runs ``tick`` at the cadence's interval until ``stop`` is set."""

    def __init__(
        self,
        tick: Callable[[], Awaitable[Any]],
        cadence: Cadence,
        *,
        on_tick: Callable[[bool, float], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        next_due: Callable[[], Awaitable[datetime | None]] | None = None,
    ) -> None:
        self._tick = tick
        self._interval = interval = cadence.interval
        self._cadence = cadence
        self._on_tick = on_tick
        self._clock = clock
        self._inflight: asyncio.Task[Any] | None = None
        self._next_due = next_due
        self._scheduler: AsyncIOScheduler | None = None
        self._early: Job | None = None
        self._early_count = 0
        # An early tick never follows the last one closer than this: a safety net should
        # something due never be claimable (next_due already skips others' leases).
        self._min_gap = min(interval / 100, timedelta(seconds=0.25))
        self.started_at = clock()
        self.last_tick_started: datetime | None = None
        self.last_tick_finished: datetime | None = None
        self.last_progress: datetime | None = None
        self.failures = 0  # ticks failed in a row
        self.last_error: str | None = None

    def beat(self) -> None:
        """The tick in flight made progress (a chunk done): a long tick under load is
        busy, not dead."""
        self.last_progress = self._clock()

    def alive(self, now: datetime) -> bool:
        """A tick finished, started or made progress within three intervals (or we just
        started)."""
        window = self._interval * 3
        if self._inflight is not None and self.last_tick_started is not None:
            marks = [self.last_tick_started, self.last_progress]
        else:
            marks = [self.last_tick_finished or self.started_at]
        return now - max(m for m in marks if m is not None) <= window

    async def _guarded(self) -> None:
        if self._inflight is not None:  # the regular and an early tick met: one is enough
            return
        self._inflight = asyncio.current_task()
        self.last_tick_started = self._clock()
        ok = True
        try:
            await self._tick()
            self.failures, self.last_error = 0, None
        except Exception as exc:  # the database or a bug: log it, keep the cadence
            ok = False
            self.failures += 1
            self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            log.error("tick_failed", error=self.last_error, consecutive=self.failures)
        finally:
            self.last_tick_finished = self._clock()
        if self._on_tick is not None:
            elapsed = (self.last_tick_finished - self.last_tick_started).total_seconds()
            self._on_tick(ok, elapsed)
        try:  # still in flight: a stop waits for the planning too
            await self._plan_early_tick()
        finally:
            self._inflight = None

    async def _plan_early_tick(self) -> None:
        """Adaptive polling sets some batches due before the next regular tick, and a
        bounded tick under load leaves some due: wake up for them then, rather than a
        whole interval later. Each early tick is a job of its own id, so one planned
        from inside a running tick is never refused as a second instance of it."""
        if self._next_due is None or self._scheduler is None:
            return
        try:
            due = await self._next_due()
        except Exception:  # no early tick this time; the regular one still comes
            return
        regular = self._scheduler.get_job("tick")
        if due is None or regular is None or regular.next_run_time is None:
            return
        # What the last tick polled is due a slack before the regular tick: that one
        # takes it (together), no early tick.
        if due >= regular.next_run_time - max(self._cadence.slack, timedelta(seconds=0.5)):
            return
        self._drop_early()
        self._early_count += 1
        self._early = self._scheduler.add_job(
            self._guarded,
            "date",
            run_date=max(due, self._clock() + self._min_gap),
            id=f"early-tick-{self._early_count}",
        )

    async def _keep_cadence(self, stop: asyncio.Event) -> None:
        """APScheduler plans by the wall clock: stepped back an hour, it would wait an
        hour for the next tick. On the event loop's monotonic clock, this notices ticks
        that stopped coming (or a next run further off than an interval) and brings the
        regular tick back to now."""
        loop = asyncio.get_running_loop()
        seconds = self._interval.total_seconds()
        last_seen, last_at = self.last_tick_started, loop.time()
        while not stop.is_set():
            await asyncio.sleep(seconds)
            if self.last_tick_started != last_seen or self._inflight is not None:
                last_seen, last_at = self.last_tick_started, loop.time()
                continue
            job = self._scheduler.get_job("tick") if self._scheduler else None
            if job is None or job.next_run_time is None:
                continue
            ahead = (job.next_run_time - utcnow()).total_seconds()
            if loop.time() - last_at > 2 * seconds or ahead > 1.5 * seconds:
                log.warning("clock_jumped", next_run_in_s=round(ahead, 1), note="ticking now")
                job.modify(next_run_time=utcnow())
                last_at = loop.time()

    def _drop_early(self) -> None:
        if self._early is not None and self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(self._early.id)
        self._early = None

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
            self._guarded, "interval", seconds=seconds, id="tick", next_run_time=utcnow()
        )
        scheduler.start()
        self._scheduler = scheduler
        guard = asyncio.create_task(self._keep_cadence(stop))
        try:
            await stop.wait()
        finally:
            await stopped(guard)
            scheduler.pause()
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                # Let in-flight cancels finish and record their outcome.
                await asyncio.wait([inflight], timeout=drain_timeout)
                if not inflight.done():  # stopped here, it gives its claims back
                    log.warning("tick_abandoned", waited_s=drain_timeout)
                    await stopped(inflight)
            scheduler.shutdown(wait=False)
