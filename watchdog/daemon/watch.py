"""What a tick watches beside the batches: the wall clock (a step back replans the
schedule), the providers' clocks (skew holds their cancels), their breakers (gone
unavailable, back) and whether the daemon keeps up (the backlog)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial

import structlog

from watchdog.core.cadence import Cadence
from watchdog.core.events import Event, Kind
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import Emitter
from watchdog.providers.breaker import Change as BreakerChange
from watchdog.providers.client import ProviderClient
from watchdog.storage.store import Store

# The wall clock moving this much more (or less) than the monotonic clock between two
# ticks is a step, not drift (NTP slews far slower).
CLOCK_STEP = timedelta(seconds=10)
log = structlog.get_logger("watchdog.engine")


class Watch:
    """The clocks, the providers and the backlog, tick by tick."""

    def __init__(
        self,
        store: Store,
        emitter: Emitter,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] | None,
        lease: timedelta,
    ) -> None:
        self.store, self.emitter, self.metrics = store, emitter, metrics
        self.clock, self.lease = clock, lease
        self.skewed: dict[str, str] = {}  # provider -> why its cancels are held
        self._news: list[Event] = []  # providers going unavailable and back, as heard
        # The wall clock is checked against this one (the app's: time.monotonic) at each
        # tick: a step of the wall clock shows as the two moving apart.
        self._monotonic = monotonic
        self._last_clocks: tuple[datetime, float] | None = None
        self._in_backlog = False

    def listen_to(self, clients: Mapping[str, ProviderClient]) -> None:
        """Have each provider's breaker report here when it opens or closes."""
        for name, client in clients.items():
            client.breaker.listener = partial(self._provider_changed, name)

    async def clock_step(self, now: datetime, cadence: Cadence) -> None:
        """A wall clock stepped back leaves every planned poll and lease that far in the
        future: a whole step of ticks would poll nothing. Noticed against the monotonic
        clock; the schedule is planned again from now (``clock_stepped``). A step
        forward only makes everything due at once; it is said, not undone."""
        if self._monotonic is None:
            return
        mono, last = self._monotonic(), self._last_clocks
        self._last_clocks = (now, mono)
        if last is None:
            return
        step = (now - last[0]).total_seconds() - (mono - last[1])
        if abs(step) < CLOCK_STEP.total_seconds():
            return
        replanned = 0
        if step < 0:
            replanned = await self.store.claims.replan(now, cadence.interval, self.lease)
        detail = {"step_s": round(step, 1), "replanned": replanned}
        await self.emitter.write([], [Event(now, None, None, Kind.CLOCK_STEPPED, detail=detail)])

    async def provider_clocks(
        self, clients: Mapping[str, ProviderClient], limit: timedelta | None
    ) -> None:
        """Hold every cancel to a provider whose clock (its answers' Date header) is
        further from ours than ``limit`` (max_clock_skew): a host clock stepped a day
        forward must not cancel healthy batches through ``age_above``. Recorded
        (``clock_skew``) when it starts; logged when it ends."""
        now, events = self.clock(), []
        for name, client in clients.items():
            offset = client.clock_offset
            off = limit is not None and offset is not None and abs(offset) > limit.total_seconds()
            if off and name not in self.skewed:
                assert offset is not None
                why = f"local clock is {-offset:+.0f}s off {name}'s (its Date header): not acting"
                self.skewed[name] = why
                detail = {"offset_s": offset, "note": why}
                events.append(Event(now, name, None, Kind.CLOCK_SKEW, detail=detail))
            elif not off and name in self.skewed:
                del self.skewed[name]
                log.warning("clock_skew_cleared", provider=name, offset_s=offset)
        if events:
            await self.emitter.write([], events)

    def _provider_changed(self, name: str, change: BreakerChange, failures: int) -> None:
        """The breakers' listener: a provider going unavailable (circuit open) or back."""
        kind = Kind.PROVIDER_UNAVAILABLE if change == "unavailable" else Kind.PROVIDER_RECOVERED
        self._news.append(Event(self.clock(), name, None, kind, detail={"failures": failures}))

    async def provider_changes(self, clients: Mapping[str, ProviderClient]) -> None:
        """Record what the breakers said during the tick."""
        news, self._news = self._news, []
        if news:
            await self.emitter.write([], news)
        for name, client in clients.items():
            self.metrics.provider_available.labels(name).set(client.breaker.available)

    async def backlog(self, cadence: Cadence, elapsed: float) -> int:
        """Say when the daemon cannot keep up: the tick took longer than the interval,
        or batches were left overdue by more than half of it. A metric always; a
        ``backlog`` event when it starts; a warning every such tick after. How many
        batches are due."""
        now = self.clock()
        due, oldest = await self.store.claims.backlog(now)
        lag = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        self.metrics.backlog.set(due)
        self.metrics.backlog_age.set(lag)
        interval = cadence.interval.total_seconds()
        behind = due > 0 and (elapsed > interval or lag > interval / 2)
        numbers = {"due": due, "overdue_s": round(lag, 1), "tick_s": round(elapsed, 1)}
        if behind and not self._in_backlog:
            detail = numbers | {"poll_interval_s": interval}
            await self.emitter.write([], [Event(now, None, None, Kind.BACKLOG, detail=detail)])
        elif behind:
            log.warning("backlog", **numbers, poll_interval_s=interval)
        elif self._in_backlog:
            log.info("backlog_cleared", due=due)
        self._in_backlog = behind
        return due
