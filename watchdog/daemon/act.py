"""Step "act" of a tick: send the planned cancels, each cut short well within the
lease, so that no other replica polls the batch before the sender settles it; then
settle each from its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog

from watchdog.core import cancels
from watchdog.core.errors import PermanentError, ProviderError, TemporaryError
from watchdog.core.models import BatchObject
from watchdog.core.observe import Judging, Observation
from watchdog.core.rows import Tracked
from watchdog.daemon.refresh import Refresher
from watchdog.providers.client import ProviderClient

log = structlog.get_logger("watchdog.act")
LEASE_SHARE_FOR_CANCELS = 0.8  # of lease_duration: a cancel call ends within it


async def send_cancels(
    clients: Mapping[str, ProviderClient], batches: list[Tracked], lease_seconds: float
) -> list[BatchObject | ProviderError]:
    """Each batch's answer, in order. The calls end while the lease still holds (retries
    and Retry-After waits included): past it, another replica could poll the batch
    before the provider acted and send a second cancel. A call cut short is settled by
    the next poll, which the outcome schedules after the provider has had time to act."""
    budget = lease_seconds * LEASE_SHARE_FOR_CANCELS
    return await asyncio.gather(*(_cancel(clients, t, budget) for t in batches))


async def _cancel(
    clients: Mapping[str, ProviderClient], tracked: Tracked, budget: float
) -> BatchObject | ProviderError:
    try:
        async with asyncio.timeout(budget):
            return await clients[tracked.view.provider].cancel(tracked.view.batch_id)
    except ProviderError as exc:
        return exc
    except TimeoutError:
        return TemporaryError(f"cancel call ran past {budget:g}s, most of the lease")
    except Exception as exc:  # never let one cancel's bug lose the others' outcomes
        log.exception("cancel_crashed", batch_id=tracked.view.batch_id)
        return PermanentError(f"internal error: {type(exc).__name__}")


async def cancel_all(
    refresher: Refresher, sending: list[Observation], lease: timedelta, judging: Judging,
    clock: Callable[[], datetime],
) -> list[cancels.Outcome]:  # fmt: skip
    """Send the cancels, then settle each from its answer (a refused one from a fresh
    GET: finished, it says, so its state is learnt now)."""
    batches = [o.after for o in sending]
    answers = await send_cancels(refresher.clients, batches, lease.total_seconds())
    now = clock()
    return [
        await _settle(refresher, cancels.outcome(t, a, now, judging), now, judging)
        for t, a in zip(batches, answers, strict=True)
    ]


async def _settle(
    refresher: Refresher, done: cancels.Outcome, now: datetime, judging: Judging
) -> cancels.Outcome:
    if done.refused is not None:
        result = await refresher.get(done.tracked)
        if isinstance(result, BatchObject):
            cancels.take_in(done, result, now, judging)
        cancels.after_refusal(done, now)
    return cancels.finish(done, now)
