"""``batch-watchdog report``: spend, batches, cancels and money saved per group and day,
from the tracked batches; totals that are the sums of the rows, an unknown cost counted
as unknown and never as zero. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from watchdog.core.durations import iso
from watchdog.core.estimates import Range, estimated_cost
from watchdog.core.pricing import Price, usd
from watchdog.core.rows import Spent

GROUPS = ("provider", "model", "policy", "metadata.KEY", "labels.KEY")
KEYED = ("metadata.", "labels.")


def check_by(by: str) -> str:
    """A --by value, or ValueError listing the valid ones."""
    if by in ("provider", "model", "policy"):
        return by
    if any(by.startswith(prefix) and len(by) > len(prefix) for prefix in KEYED):
        return by
    raise ValueError(f"--by {by!r}: use one of {', '.join(GROUPS)}")


@dataclass
class Line:
    """One (day, group): its batches, their known spend, how many of unknown cost, the
    cancels that took and what they saved."""

    day: str
    group: str
    batches: int = 0
    spend: Decimal = Decimal(0)
    unknown_cost: int = 0
    cancels: int = 0
    saved: Decimal = Decimal(0)
    estimated: int = 0  # batches with an estimate at known prices
    estimated_high: Decimal = Decimal(0)  # their estimates' upper bounds
    # Of those that ended with a known cost: their cost, and their estimates' bounds.
    ended_cost: Decimal = Decimal(0)
    ended_high: Decimal = Decimal(0)

    def add(self, row: Spent, estimate: Range | None = None) -> None:
        self.batches += 1
        if estimate is not None:
            self.estimated += 1
            self.estimated_high += estimate.high
            if row.finished and row.cost_usd is not None:
                self.ended_cost += row.cost_usd
                self.ended_high += estimate.high
        if row.cost_usd is None:
            self.unknown_cost += 1
        else:
            self.spend += row.cost_usd
        if row.cancel_outcome == "succeeded":
            self.cancels += 1
            projected, cost = row.cancel_projected_usd, row.cost_usd
            if projected is not None and cost is not None:
                self.saved += max(projected - cost, Decimal(0))

    def include(self, other: Line) -> None:
        """Add another line's figures to this one (the totals)."""
        self.batches += other.batches
        self.spend += other.spend
        self.unknown_cost += other.unknown_cost
        self.cancels += other.cancels
        self.saved += other.saved
        self.estimated += other.estimated
        self.estimated_high += other.estimated_high
        self.ended_cost += other.ended_cost
        self.ended_high += other.ended_high

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "group": self.group,
            "batches": self.batches,
            "spend_usd": usd(self.spend),
            "unknown_cost": self.unknown_cost,
            "cancels": self.cancels,
            "saved_usd": usd(self.saved),
            "estimated": self.estimated,
            "estimated_usd": usd(self.estimated_high),
            "cost_to_estimate": self.cost_to_estimate,
        }

    @property
    def cost_to_estimate(self) -> float | None:
        """What the ended batches with an estimate cost, over their estimates' upper
        bounds (1.0: they wrote every output token they were allowed)."""
        if not self.ended_high:
            return None
        return float(round(self.ended_cost / self.ended_high, 4))


@dataclass
class Report:
    """Spend per (day, group) of the batches created since ``since``; ``as_dict`` is
    what ``report --json`` prints."""

    by: str
    since: datetime
    prices: tuple[Price, ...] = ()  # what the estimates are costed at
    lines: dict[tuple[str, str], Line] = field(default_factory=dict)

    def add(self, row: Spent) -> None:
        day = row.created_at.date().isoformat() if row.created_at is not None else "unknown"
        key = (day, group_of(row, self.by))
        estimate = estimated_cost(self.prices, row.provider, row.model, row.estimate)
        self.lines.setdefault(key, Line(*key)).add(row, estimate)

    def rows(self) -> list[Line]:
        return [self.lines[k] for k in sorted(self.lines)]

    def totals(self) -> Line:
        total = Line("all", "all")
        for line in self.lines.values():
            total.include(line)
        return total

    def as_dict(self) -> dict[str, Any]:
        rows = [line.as_dict() for line in self.rows()]
        totals = self.totals().as_dict()
        return {"since": iso(self.since), "by": self.by, "rows": rows, "totals": totals}


def group_of(row: Spent, by: str) -> str:
    if by == "policy":
        return str(row.cancel_policy or row.matched_policy or "-")
    if by.startswith("metadata."):
        return (row.metadata or {}).get(by.removeprefix("metadata."), "-")
    if by.startswith("labels."):
        return (row.labels or {}).get(by.removeprefix("labels."), "-")
    return str(getattr(row, by) or "-")
