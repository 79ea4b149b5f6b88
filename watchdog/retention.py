"""Event retention: routine events (``counts_changed`` by default) deleted once older
than their kind's age, a bounded batch at a time in short transactions beside the
ticks, never inside one. Decision events are kept unless configured otherwise."""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from watchdog.settings import RetentionSettings
from watchdog.store import Store

log = structlog.get_logger("watchdog.retention")


async def prune(store: Store, retention: RetentionSettings, now: datetime) -> dict[str, int]:
    """One run: for each kind with an age, delete what is older, at most
    ``max_batches`` deletes of ``batch`` rows in all; how many of each kind went."""
    deleted: dict[str, int] = {}
    budget = retention.max_batches
    for kind, age in retention.events.items():
        while age is not None and budget > 0:
            budget -= 1
            gone = await store.prune_events(str(kind), now - age, retention.batch)
            deleted[str(kind)] = deleted.get(str(kind), 0) + gone
            if gone < retention.batch:
                break
            await asyncio.sleep(0)  # a tick waiting for the database goes first
    if any(deleted.values()):
        log.info("events_pruned", deleted={k: n for k, n in deleted.items() if n})
    await _samples(store, retention, now, budget)
    return deleted


async def _samples(store: Store, retention: RetentionSettings, now: datetime, budget: int) -> None:
    """Replay's history: thinned after ``thin_after`` to one sample per batch and step
    (and status change), deleted after ``drop_after``; within what is left of the run's
    bounded deletes."""
    kept = retention.samples
    dropped = thinned = 0
    while budget > 0:
        budget -= 1
        gone = await store.drop_samples(now - kept.drop_after, retention.batch)
        dropped += gone
        if gone < retention.batch:
            break
        await asyncio.sleep(0)
    while budget > 0:
        budget -= 1
        seen = await store.thin_samples(now - kept.thin_after, kept.step, retention.batch)
        thinned += seen
        if seen < retention.batch:
            break
        await asyncio.sleep(0)
    if dropped or thinned:
        log.info("samples_pruned", dropped=dropped, thinned_through=thinned)
