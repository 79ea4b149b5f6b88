"""The tick loop's wiring: ticks come on the interval, a failing tick is logged and the
next one still comes, and stopping waits for the tick in flight instead of killing it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from structlog.testing import capture_logs

from watchdog.core.cadence import Cadence
from watchdog.daemon.scheduler import TickLoop


async def test_ticks_repeat_and_survive_a_failure() -> None:
    """A tick that raises is logged as tick_failed; the loop keeps its cadence."""
    calls: list[int] = []
    stop = asyncio.Event()

    async def tick() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("database is down")
        if len(calls) == 3:
            stop.set()

    loop = TickLoop(tick, Cadence(timedelta(seconds=0.05)))
    with capture_logs() as logs:
        await asyncio.wait_for(loop.run(stop), timeout=60)
    assert len(calls) >= 3
    failed = [e for e in logs if e["event"] == "tick_failed"]
    assert len(failed) == 1 and "database is down" in failed[0]["error"]
    assert loop.failures == 0 and loop.last_tick_finished is not None


async def test_stop_drains_the_tick_in_flight() -> None:
    """Stopping mid-tick lets the tick finish (its cancels get recorded), then returns."""
    stop = asyncio.Event()
    finished = asyncio.Event()

    async def tick() -> None:
        stop.set()
        await asyncio.sleep(0.2)
        finished.set()

    await asyncio.wait_for(TickLoop(tick, Cadence(timedelta(seconds=60))).run(stop), timeout=60)
    assert finished.is_set()


async def test_a_tick_past_the_drain_timeout_is_stopped_and_cleaned_up_before_returning() -> None:
    """A tick still running when the drain time is up is cancelled, and its cleanup (the
    claims given back) runs before ``run`` returns, while the database is still open:
    not later, in asyncio's teardown, after the engine was disposed."""
    stop = asyncio.Event()
    cleaned = asyncio.Event()

    async def tick() -> None:
        stop.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)  # a cleanup that itself awaits, as a release does
            cleaned.set()

    with capture_logs() as logs:
        loop = TickLoop(tick, Cadence(timedelta(seconds=60)))
        await asyncio.wait_for(loop.run(stop, drain_timeout=0.1), timeout=60)
    assert cleaned.is_set()
    assert [e["waited_s"] for e in logs if e["event"] == "tick_abandoned"] == [0.1]


async def test_an_early_tick_comes_for_a_batch_due_before_the_next_regular_one() -> None:
    """Adaptive polling: when something is due before the next regular tick, the loop
    wakes for it instead of waiting the whole interval."""
    from datetime import UTC, datetime

    stop = asyncio.Event()
    started: list[datetime] = []

    async def tick() -> None:
        started.append(datetime.now(UTC))
        if len(started) == 2:
            stop.set()

    async def next_due() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=0.3)

    # Without the early tick the second would come a whole 60 s interval later: past
    # this bound, which nothing but that reaches.
    loop = TickLoop(tick, Cadence(timedelta(seconds=60)), next_due=next_due)
    await asyncio.wait_for(loop.run(stop), timeout=45)
    assert len(started) == 2


async def test_ticks_go_on_when_the_wall_clock_steps_back() -> None:
    """The wall clock stepped back an hour leaves APScheduler's next run an hour away;
    the loop notices on the monotonic clock and ticks again within two intervals."""
    stop = asyncio.Event()
    started: list[float] = []
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        started.append(loop.time())

    ticks = TickLoop(tick, Cadence(timedelta(seconds=0.2)))
    runner = asyncio.create_task(ticks.run(stop))
    while len(started) < 2:
        await asyncio.sleep(0.01)
    assert ticks._scheduler is not None
    job = ticks._scheduler.get_job("tick")
    from datetime import UTC, datetime

    with capture_logs() as logs:
        job.modify(next_run_time=datetime.now(UTC) + timedelta(hours=1))  # the step back
        count = len(started)
        # Two more ticks: without the guard the next would come an hour later, far past
        # this bound, which nothing else reaches.
        async with asyncio.timeout(120):
            while len(started) < count + 2:
                await asyncio.sleep(0.01)
    stop.set()
    await runner
    assert any(e["event"] == "clock_jumped" for e in logs)
