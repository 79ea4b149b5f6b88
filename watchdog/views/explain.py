"""``batch-watchdog explain``: one tracked batch as the daemon sees it — each policy and
budget, every condition's value against its threshold, the ``for:`` clocks, the
exemption and the switches — and so what the next tick will do. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from watchdog.core.budgets import Assessment, Figures
from watchdog.core.decisions import candidate_of, exempt_from, hold_reason
from watchdog.core.durations import human_duration, iso
from watchdog.core.estimates import estimated_cost, summary
from watchdog.core.models import TERMINAL, Counts
from watchdog.core.policies import (
    DURATION_CONDITIONS,
    ConditionRow,
    Facts,
    History,
    PolicyRow,
    Verdict,
    evaluate,
    policy_rows,
)
from watchdog.core.pricing import dollars, projected_cost, usd
from watchdog.core.rows import Tracked
from watchdog.settings import Settings
from watchdog.views.text import estimate_text


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """A budget group the batch counts in, and whether the group chose it to cancel."""

    figures: Figures
    this_batch_chosen: bool

    def as_dict(self) -> dict[str, Any]:
        return self.figures.as_dict() | {"this_batch_chosen": self.this_batch_chosen}


@dataclass(frozen=True, slots=True)
class Explanation:
    """One tracked batch as the daemon sees it, and what its next tick will do;
    ``as_dict`` is what ``explain --json`` prints."""

    batch_id: str
    provider: str
    status: str | None
    counts: Counts | None
    cost_usd: float | None
    projected_cost_usd: float | None
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    policies: tuple[PolicyRow, ...]
    budgets: tuple[BudgetRow, ...]
    exempt: str | None
    dry_run: bool
    safety_tripped: bool
    cancel_policy: str | None
    cancel_outcome: str | None
    next_tick: str
    estimate: dict[str, Any] | None = None  # what its input file said (core.estimates.summary)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "provider": self.provider,
            "status": self.status,
            "request_counts": None if self.counts is None else self.counts.as_dict(),
            "cost_usd": self.cost_usd,
            "projected_cost_usd": self.projected_cost_usd,
            "estimate": self.estimate,
            "last_polled_at": iso(self.last_polled_at),
            "next_poll_at": iso(self.next_poll_at),
            "policies": [row.as_dict() for row in self.policies],
            "budgets": [row.as_dict() for row in self.budgets],
            "exempt": self.exempt,
            "dry_run": self.dry_run,
            "safety_tripped": self.safety_tripped,
            "cancel": {"policy": self.cancel_policy, "outcome": self.cancel_outcome},
            "next_tick": self.next_tick,
        }


def explained(
    settings: Settings,
    tracked: Tracked,
    next_poll: datetime | None,
    groups: Sequence[Assessment],
    tripped: bool,
    now: datetime,
) -> Explanation:
    """What ``explain`` shows of one batch (the JSON and the text view alike)."""
    view, counts = tracked.view, tracked.view.counts
    history = History(
        finished=None if counts is None else counts.finished,
        at=tracked.last_polled_at,
        progress_at=tracked.progress_at,
    )
    found = estimated_cost(settings.pricing, view.provider, view.model, tracked.estimate)
    facts = Facts(view, tracked.cost_usd, now, history, found)
    exempt_metadata = settings.safety.exempt_metadata
    budgets = tuple(_budget(one, tracked) for one in groups)
    verdict = evaluate(settings.policies, facts, tracked.pending).verdict
    chosen = next((b.figures.budget for b in budgets if b.this_batch_chosen), None)
    switches = Switches(settings.dry_run, tripped)
    return Explanation(
        batch_id=view.batch_id,
        provider=view.provider,
        status=view.status,
        counts=counts,
        cost_usd=usd(tracked.cost_usd),
        projected_cost_usd=usd(projected_cost(tracked.cost_usd, counts, 1)),
        last_polled_at=tracked.last_polled_at,
        next_poll_at=next_poll,
        policies=tuple(policy_rows(settings.policies, facts, tracked.pending)),
        budgets=budgets,
        exempt=exempt_from(tracked, exempt_metadata, now),
        dry_run=settings.dry_run,
        safety_tripped=tripped,
        cancel_policy=tracked.cancel_policy,
        cancel_outcome=tracked.cancel_outcome,
        next_tick=_next(tracked, verdict, chosen, switches, exempt_metadata, now),
        estimate=summary(tracked.estimate, found, tracked.cost_usd, view.status in TERMINAL),
    )


@dataclass(frozen=True, slots=True)
class Switches:
    dry_run: bool
    safety_tripped: bool


def _budget(one: Assessment, tracked: Tracked) -> BudgetRow:
    chosen = any((m.view.provider, m.view.batch_id) == tracked.key for m in one.chosen)
    return BudgetRow(one.figures(), chosen)


def _next(
    tracked: Tracked,
    verdict: Verdict | None,
    chosen: str | None,
    switches: Switches,
    exempt_metadata: Mapping[str, str],
    now: datetime,
) -> str:
    """What the next tick will do, judged on what the last poll saw."""
    if tracked.view.status in TERMINAL:
        return f"nothing: {tracked.view.status}, not polled again"
    if verdict is None and chosen is None:
        return "poll it; no policy holds"
    if verdict is not None and verdict.action == "alert" and chosen is None:
        return f"poll it; alert from {verdict.policy} (recorded once)"
    name = verdict.policy if verdict is not None and verdict.action == "cancel" else chosen
    held = hold_reason(candidate_of(tracked, str(name), exempt_metadata, now))
    held = held or ("dry run" if switches.dry_run else None)
    held = held or ("safety tripped: alert-only until resume" if switches.safety_tripped else None)
    return f"hold the cancel from {name}: {held}" if held else f"cancel it ({name})"


def explanation_text(e: Explanation) -> str:
    """The text view."""
    counts = e.counts
    done = f"{counts.completed + counts.failed}/{counts.total} done" if counts else "-"
    cost = dollars(e.cost_usd, places=4)
    lines = [
        f"{e.batch_id} ({e.provider}): {e.status or 'not polled'}, "
        f"{done}, cost {cost}, projected {dollars(e.projected_cost_usd)}",
        f"polled {iso(e.last_polled_at) or 'never'}; next poll {iso(e.next_poll_at) or '-'}",
        f"estimate: {estimate_text(e.estimate)}",
        "policies (the first that holds acts):",
    ]
    for row in e.policies:
        state = "holds" if row.holds else "does not hold"
        lines.append(f"  {row.policy} ({row.action}): applies {row.applies}; {state}")
        lines += [f"    {_condition(c)}" for c in row.conditions]
        if row.clock is not None:
            lines.append(f"    for: {row.clock.held_s:.0f}s of {row.clock.needed_s:.0f}s")
    for b in e.budgets:
        mark = "; this batch would be cancelled" if b.this_batch_chosen else ""
        f = b.figures
        lines.append(
            f"budget {f.budget}: committed {dollars(f.committed_usd)} of "
            f"{dollars(f.limit_usd)} ({f.state}){mark}"
        )
    lines.append(f"exempt: {e.exempt or 'no'}")
    switches = (str(e.dry_run).lower(), str(e.safety_tripped).lower())
    lines.append(f"dry_run: {switches[0]}; safety tripped: {switches[1]}")
    lines.append(f"next tick: {e.next_tick}")
    return "\n".join(lines)


def _condition(c: ConditionRow) -> str:
    shown = _shown(c.condition)
    if c.observed is None:
        return f"{c.condition} {shown(c.threshold)}: unknown ({c.unknown})"
    mark = "holds" if c.holds else "does not hold"
    return f"{c.condition} {shown(c.threshold)}: observed {shown(c.observed)} ({mark})"


def _shown(condition: str) -> Callable[[Any], str]:
    """How a condition's values read: durations as durations, money as money (the JSON
    keeps seconds and plain numbers)."""
    if condition in DURATION_CONDITIONS:
        return lambda v: v if isinstance(v, str) else human_duration(v)
    if condition.endswith("_usd_above"):
        return lambda v: dollars(v, places=4)
    return str
