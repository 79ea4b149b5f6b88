"""Event retention: routine events (``counts_changed`` by default) deleted once older
than their kind's age, a bounded batch at a time in short transactions beside the
ticks, never inside one. Decision events are kept unless configured otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

import structlog

from watchdog.core.config import RetentionSettings
from watchdog.storage.store import Store

log = structlog.get_logger("watchdog.retention")


async def prune(store: Store, retention: RetentionSettings, now: datetime) -> dict[str, int]:
    """One run: for each kind with an age, delete what is older, at most
    ``max_batches`` deletes of ``batch`` rows in all; how many of each kind went."""
    deleted: dict[str, int] = {}
    runs, size = retention.max_batches, retention.batch
    for kind, age in retention.events.items():
        if age is not None and runs > 0:
            older = partial(store.journal.prune_events, str(kind), now - age, size)
            deleted[str(kind)], runs = await _in_runs(older, runs, size)
    if any(deleted.values()):
        log.info("events_pruned", deleted={k: n for k, n in deleted.items() if n})
    await _samples(store, retention, now, runs)
    return deleted


async def _samples(store: Store, retention: RetentionSettings, now: datetime, runs: int) -> None:
    """Replay's history: thinned after ``thin_after`` to one sample per batch and step
    (and status change), deleted after ``drop_after``; within what is left of the run's
    bounded deletes."""
    kept, size = retention.samples, retention.batch
    drop = partial(store.journal.drop_samples, now - kept.drop_after, size)
    dropped, runs = await _in_runs(drop, runs, size)
    thin = partial(store.journal.thin_samples, now - kept.thin_after, kept.step, size)
    thinned, runs = await _in_runs(thin, runs, size)
    if dropped or thinned:
        log.info("samples_pruned", dropped=dropped, thinned_through=thinned)


async def _in_runs(step: Callable[[], Awaitable[int]], runs: int, size: int) -> tuple[int, int]:
    """``step`` (one bounded delete of up to ``size`` rows) again until it does less than
    ``size`` or ``runs`` are used up: the rows it did, and the runs left."""
    done = 0
    while runs > 0:
        runs -= 1
        rows = await step()
        done += rows
        if rows < size:
            break
        await asyncio.sleep(0)  # a tick waiting for the database goes first
    return done, runs
