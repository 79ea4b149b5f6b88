"""The budgets' ledger: the finished batches each budget counts, summed by group and
kept up to date as batches end, leave and age out of the windows, so that an
assessment costs the number of groups, not the window's history."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from watchdog.core.budgets import Budget, Group, Sums
from watchdog.core.models import BatchView


@dataclass(frozen=True, slots=True)
class Finished:
    """A batch that ended, as the budgets count it: final, it is never polled again."""

    view: BatchView
    cost: Decimal | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.view.provider, self.view.batch_id)

    @property
    def created(self) -> float:
        return self.view.created_at.timestamp() if self.view.created_at else float("-inf")


class Ledger:
    """The finished batches each budget counts (those created within its window), summed
    by group, kept up to date as batches end (``add``), leave (``remove``) and age out of
    the windows (``advance``): an assessment then costs the number of groups, not the
    window's history. Windows only move forward; ``advance`` says when one moved back
    (the clock stepped back) and the ledger must be built again."""

    def __init__(self, budgets: Sequence[Budget], now: datetime) -> None:
        self.budgets = tuple(budgets)
        self._starts = {b.name: b.start(now).timestamp() for b in self.budgets}
        self._sums: dict[str, dict[Group, Sums]] = {b.name: {} for b in self.budgets}
        # Per budget, what it counts by creation (the oldest leave first): (created, seq).
        self._ageing: dict[str, list[tuple[float, int]]] = {b.name: [] for b in self.budgets}
        self._entries: dict[tuple[str, str], int] = {}  # key -> seq
        self._counted: dict[int, tuple[Finished, int]] = {}  # seq -> item, budgets counting
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def sums(self, budget: str) -> Mapping[Group, Sums]:
        return {g: s for g, s in self._sums[budget].items() if s.count}

    def add(self, item: Finished) -> None:
        """A batch that ended (once: a batch already in is left as it is)."""
        if item.key in self._entries:
            return
        counting = self._counting(item)
        if not counting:
            return
        self._seq += 1
        for budget in counting:
            self._take(budget, item, 1)
            heapq.heappush(self._ageing[budget.name], (item.created, self._seq))
        self._entries[item.key] = self._seq
        self._counted[self._seq] = (item, len(counting))

    def remove(self, key: tuple[str, str]) -> None:
        """A batch no longer tracked (its places in the ageing heaps are left to lapse)."""
        seq = self._entries.pop(key, None)
        if seq is None:
            return
        item, _ = self._counted.pop(seq)
        for budget in self._counting(item):
            self._take(budget, item, -1)

    def advance(self, now: datetime) -> bool:
        """Move every window to ``now``: what it no longer holds leaves its sums. False
        when a window moved back (build the ledger again)."""
        for budget in self.budgets:
            start = budget.start(now).timestamp()
            if start < self._starts[budget.name]:
                return False
            self._starts[budget.name] = start
            ageing = self._ageing[budget.name]
            while ageing and ageing[0][0] < start:
                _, seq = heapq.heappop(ageing)
                self._lapse(budget, seq)
        return True

    def _lapse(self, budget: Budget, seq: int) -> None:
        found = self._counted.get(seq)
        if found is None:  # removed meanwhile
            return
        item, left = found
        self._take(budget, item, -1)
        if left > 1:
            self._counted[seq] = (item, left - 1)
        else:  # no window holds it any more
            del self._counted[seq]
            del self._entries[item.key]

    def _take(self, budget: Budget, item: Finished, sign: int) -> None:
        sums = self._sums[budget.name].setdefault(budget.group_of(item.view), Sums())
        sums.take(item.cost, sign)

    def _counting(self, item: Finished) -> list[Budget]:
        return [
            b
            for b in self.budgets
            if item.created >= self._starts[b.name] and b.match.matches(item.view)
        ]
