"""``batch-watchdog report``: spend, batches, cancels and money saved per group and day,
from the tracked batches; totals that are the sums of the rows, an unknown cost counted
as unknown and never as zero. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from watchdog.core.pricing import usd
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

    def add(self, row: Spent) -> None:
        self.batches += 1
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "group": self.group,
            "batches": self.batches,
            "spend_usd": usd(self.spend),
            "unknown_cost": self.unknown_cost,
            "cancels": self.cancels,
            "saved_usd": usd(self.saved),
        }


@dataclass
class Report:
    """Spend per (day, group) of the batches created since ``since``; ``as_dict`` is
    what ``report --json`` prints."""

    by: str
    since: datetime
    lines: dict[tuple[str, str], Line] = field(default_factory=dict)

    def add(self, row: Spent) -> None:
        day = row.created_at.date().isoformat() if row.created_at is not None else "unknown"
        key = (day, group_of(row, self.by))
        self.lines.setdefault(key, Line(*key)).add(row)

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
        return {"since": self.since.isoformat(), "by": self.by, "rows": rows, "totals": totals}


def group_of(row: Spent, by: str) -> str:
    if by == "policy":
        return str(row.cancel_policy or row.matched_policy or "-")
    if by.startswith("metadata."):
        return (row.metadata or {}).get(by.removeprefix("metadata."), "-")
    if by.startswith("labels."):
        return (row.labels or {}).get(by.removeprefix("labels."), "-")
    return str(getattr(row, by) or "-")
