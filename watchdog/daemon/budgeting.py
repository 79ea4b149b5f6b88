"""The budgets within a tick: every replica assesses them (for its gauges and page);
the one holding their turn records what they say and names the batches to cancel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from watchdog.core.budgets import Assessment, news, verdict
from watchdog.core.observe import Observation, Rules
from watchdog.core.policies import Verdict
from watchdog.daemon.budgetbook import BudgetBook
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import Emitter
from watchdog.storage.coordination import BUDGET_PASS, BUDGETS
from watchdog.storage.store import Store

Key = tuple[str, str]


class Budgeting:
    """The budgets' book (shared with the status page) and this replica's turn."""

    def __init__(
        self,
        store: Store,
        emitter: Emitter,
        metrics: Metrics,
        *,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.store, self.emitter, self.metrics = store, emitter, metrics
        self.owner, self.lease, self.clock = owner, lease, clock
        self.book = BudgetBook()
        self._turn_until: datetime | None = None
        self._memory: dict[str, Any] | None = None  # what the budgets last said

    async def assess(self, rules: Rules, retry_due: set[Key]) -> dict[Key, Verdict]:
        """Assess every budget; with the turn, record what they say: the batches they
        choose to cancel now (one whose failed cancel is still backing off waits, as a
        policy's does, until its poll in ``retry_due``)."""
        now = self.clock()
        if not rules.budgets:
            return {}
        found = await self.book.assess(self.store, rules, now)
        self.metrics.set_budgets(found)
        if not await self._turn(now):
            return {}
        return await self._say(found, retry_due)

    async def close(self) -> None:
        """At shutdown: give back the budgets' turn (kept from tick to tick), so that
        another replica takes it at once rather than when it would have lapsed."""
        if self._turn_until is not None:
            self._turn_until = None
            await self.store.coord.end_turn(BUDGET_PASS, self.owner, self.clock())

    async def _turn(self, now: datetime) -> bool:
        """Whether this replica holds the budgets' turn: kept from tick to tick (renewed
        once half its lease is gone, given back at shutdown), so that an idle tick does
        not write to hold it. While it is held, what the budgets last said is this
        replica's own: kept in memory, read again only on taking the turn."""
        held = self._turn_until
        if held is not None and held - now > self.lease / 2:
            return True
        until = now + self.lease
        taken = await self.store.coord.take_turn(BUDGET_PASS, self.owner, now, until)
        if not taken or held is None:  # lost, or just taken: what was said is another's
            self._memory = None
        self._turn_until = until if taken else None
        return taken

    async def _say(self, found: list[Assessment], retry_due: set[Key]) -> dict[Key, Verdict]:
        now = self.clock()
        memory = self._memory
        if memory is None:
            memory = await self.store.coord.get_state(BUDGETS) or {}
        said = news(found, memory, now)
        if said.events or said.memory != memory:  # an idle tick writes nothing
            await self.store.coord.set_state(BUDGETS, said.memory, now, said.events)
            self.emitter.tell(said.events)
        self._memory = said.memory
        waiting = said.backing_off - retry_due
        return {k: verdict(one) for k, one in said.condemned.items() if k not in waiting}


def forced_verdict(obs: Observation, wanted: Verdict | None) -> Observation:
    """A budget's verdict on a batch no policy wants cancelled already."""
    if wanted is None or not obs.ok or (obs.verdict and obs.verdict.action == "cancel"):
        return obs
    return replace(obs, verdict=wanted)


async def assess_budgets(store: Store, rules: Rules, now: datetime) -> list[Assessment]:
    """Every budget group of ``rules`` over the database as it is now (read-only), for
    one look (``budgets``, ``explain``): the daemon keeps its own book instead."""
    return await BudgetBook().assess(store, rules, now)
