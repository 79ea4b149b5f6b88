"""The budgets' running book: the ledger kept up to date from what ended (or was
untracked) since the last look, the running batches read afresh — an assessment costs
what changed and the number of groups, not the window."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from watchdog.core.budgets import Assessment, assess, spending_of
from watchdog.core.ledger import Finished, Ledger
from watchdog.core.observe import Rules
from watchdog.storage.store import Store

# What ended is read from the newest end seen, less this margin: a replica's
# transaction that set finished_at before it committed, or a replica's clock a little
# behind, is still seen (a batch is taken in once however often it is read).
OVERLAP = timedelta(minutes=1)
# A look this much before the last one is the clock stepped back: the book is built again.
STEP_BACK = timedelta(minutes=5)


class BudgetBook:
    """One per daemon: the tick's assessments and the status page's share it."""

    def __init__(self) -> None:
        self._ledger: Ledger | None = None
        self._looked: datetime | None = None  # the last look: untracks after it are news
        self._ended: datetime | None = None  # the newest end seen: ends after it are news
        self._lock = asyncio.Lock()
        self.last: list[Assessment] = []

    async def assess(self, store: Store, rules: Rules, now: datetime) -> list[Assessment]:
        """Every budget group of ``rules`` as the database holds it now."""
        if not rules.budgets:
            self.last = []
            return []
        async with self._lock:
            if self._looked is not None and self._looked - STEP_BACK < now < self._looked:
                # Callers read the clock at their own moments (the tick, the page): one a
                # little behind the last is the same look, not the clock stepping back.
                now = self._looked
            ledger = self._ledger
            fresh = ledger is None or ledger.budgets != rules.budgets or not ledger.advance(now)
            if fresh or ledger is None:
                ledger = await self._build(store, rules, now)
            assert self._looked is not None and self._ended is not None  # set by _build
            changed = await store.reads.budget_changes(
                self._ended - OVERLAP, self._looked - OVERLAP
            )
            for key in changed.untracked:
                ledger.remove(key)
            for view, cost, ended in changed.finished:
                ledger.add(Finished(view, cost))
                self._ended = max(self._ended, min(ended, now))
            self._looked = now
            exempt = rules.safety.exempt_metadata
            running = [spending_of(t, exempt, now, rules.pricing) for t in changed.running]
            self.last = assess(rules.budgets, running, now, ledger)
            return self.last

    async def _build(self, store: Store, rules: Rules, now: datetime) -> Ledger:
        """Read what the windows hold of the past, once."""
        ledger = Ledger(rules.budgets, now)
        async for view, cost in store.reads.finished_created(
            min(b.start(now) for b in rules.budgets)
        ):
            ledger.add(Finished(view, cost))
        self._ledger, self._looked, self._ended = ledger, now, now
        return ledger
