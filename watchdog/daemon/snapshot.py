"""What the status page and ``/metrics`` show, gathered by a task of its own at most
every few seconds with bounded reads: a page view or a scrape reads no database and
never stands in the tick's way, whatever the account's history."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import structlog

from watchdog.core.budgets import Assessment
from watchdog.core.models import TERMINAL
from watchdog.daemon import gate
from watchdog.daemon.engine import Engine
from watchdog.daemon.metrics import Metrics
from watchdog.storage.journal import EventFilter
from watchdog.storage.store import Store
from watchdog.views.page import AGE, AGE_TEXT, Status, age_of, render_page

log = structlog.get_logger("watchdog.snapshot")
PAGE_BATCHES, PAGE_EVENTS, SPEND_DAYS = 500, 25, 14  # what the status page shows
EVERY = timedelta(seconds=5)  # batches, events, budgets, safety: bounded reads
TOTALS_EVERY = timedelta(seconds=15)  # the counts and the 14 days' spend: aggregates


class Snapshot:
    """The latest status, refreshed by ``run``; ``status`` is None until the first."""

    def __init__(self, store: Store, engine: Engine, metrics: Metrics) -> None:
        self.store, self.engine, self.metrics = store, engine, metrics
        self.clock: Callable[[], datetime] = engine.clock
        self.status: Status | None = None
        self._totals_at: datetime | None = None
        self._poked = asyncio.Event()
        self._poked_once = False
        self._page: tuple[Status, str] | None = None

    def poke(self) -> None:
        """A tick ended: the first one is shown at once (its totals too: the ones taken
        at start knew nothing yet); later ones with the next refresh."""
        if not self._poked_once:
            self._poked_once, self._totals_at = True, None
            self._poked.set()

    async def run(self) -> None:
        """Refresh for ever, every EVERY (the first time after the first tick too, so
        that the page soon shows what it found); a failed refresh keeps the last status
        and says why."""
        while True:
            self._poked.clear()
            try:
                await self.refresh()
            except Exception as exc:  # the database may be away: the page says how old
                log.warning("snapshot_failed", error=" ".join(str(exc).split())[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), EVERY.total_seconds())

    def html(self, viewed: datetime) -> str:
        """The page, rendered once per snapshot (only its age is filled in per view)."""
        if self.status is None:
            raise LookupError("no snapshot yet")
        if self._page is None or self._page[0] is not self.status:
            self._page = (self.status, render_page(self.status, AGE))
        status, page = self._page
        return page.replace(AGE_TEXT, age_of(status, viewed), 1)

    async def refresh(self) -> None:
        now, store = self.clock(), self.store
        status = self.status or Status(now=now)
        if self._totals_at is None or now - self._totals_at >= TOTALS_EVERY:
            status = await self._totals(status, now)
            self._totals_at = now
        recent = EventFilter(limit=PAGE_EVENTS)
        self.status = replace(
            status,
            now=now,
            batches=await store.reads.some_batches(PAGE_BATCHES, now - timedelta(days=SPEND_DAYS)),
            events=[e async for e in store.journal.stream_events(recent)][::-1],
            budgets=[a.figures() for a in await self._budgets(now)],
            providers={n: c.breaker.available for n, c in self.engine.clients.items()},
            safety_tripped=await gate.status(store) is not None,
            dry_run=self.engine.rules.dry_run,
        )

    async def _budgets(self, now: datetime) -> list[Assessment]:
        return await self.engine.budgeting.book.assess(self.store, self.engine.rules, now)

    async def _totals(self, status: Status, now: datetime) -> Status:
        """Counts by status and the spend per day: aggregates the database sums (once a
        minute), also what /metrics exports."""
        counts = await self.store.reads.stats()
        self.metrics.set_tracked(counts)
        by_day: dict[str, dict[str, float]] = {}
        saved = 0.0
        for day, provider, spend, kept in await self.store.reads.spend_by_day(
            now - timedelta(days=SPEND_DAYS)
        ):
            by_day.setdefault(day, {})[provider] = spend
            saved += kept
        return replace(
            status,
            spend_by_day=by_day,
            saved_usd=saved,
            tracked=sum(n for _, _, n, _ in counts),
            running=sum(n for _, s, n, _ in counts if s not in TERMINAL),
            known_spend_usd=float(sum(c for _, _, _, c in counts if c is not None)),
            totals_at=now,
        )
