"""``batch-watchdog report``: spend, batches, cancels and money saved per group and day,
from the tracked batches; totals that are the sums of the rows, an unknown cost counted
as unknown and never as zero. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from watchdog.core.models import metadata_text
from watchdog.core.pricing import usd

GROUPS = ("provider", "model", "policy", "metadata.KEY")


def check_by(by: str) -> str:
    """A --by value, or ValueError listing the valid ones."""
    if by in ("provider", "model", "policy") or (by.startswith("metadata.") and len(by) > 9):
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

    def add(self, row: Mapping[str, Any]) -> None:
        self.batches += 1
        if row["cost_usd"] is None:
            self.unknown_cost += 1
        else:
            self.spend += row["cost_usd"]
        if row["cancel_outcome"] == "succeeded":
            self.cancels += 1
            projected, cost = row["cancel_projected_usd"], row["cost_usd"]
            if projected is not None and cost is not None:
                self.saved += max(projected - cost, Decimal(0))

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
    by: str
    lines: dict[tuple[str, str], Line] = field(default_factory=dict)

    def add(self, row: Mapping[str, Any]) -> None:
        created = row["created_at"]
        day = created.date().isoformat() if created is not None else "unknown"
        key = (day, group_of(row, self.by))
        self.lines.setdefault(key, Line(*key)).add(row)

    def as_dict(self) -> dict[str, Any]:
        rows = [self.lines[k].as_dict() for k in sorted(self.lines)]
        total = Line("all", "all")
        for line in self.lines.values():
            total.batches += line.batches
            total.spend += line.spend
            total.unknown_cost += line.unknown_cost
            total.cancels += line.cancels
            total.saved += line.saved
        return {"by": self.by, "rows": rows, "totals": total.as_dict()}


def group_of(row: Mapping[str, Any], by: str) -> str:
    if by == "policy":
        return str(row["cancel_policy"] or row["matched_policy"] or "-")
    if by.startswith("metadata."):
        return (metadata_text(row["metadata"]) or {}).get(by.removeprefix("metadata."), "-")
    return str(row[by] or "-")


def build(rows: Iterable[Mapping[str, Any]], by: str) -> dict[str, Any]:
    report = Report(by)
    for row in rows:
        report.add(row)
    return report.as_dict()
