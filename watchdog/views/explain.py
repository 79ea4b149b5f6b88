"""``batch-watchdog explain``: one tracked batch as the daemon sees it — each policy and
budget, every condition's value against its threshold, the ``for:`` clocks, the
exemption and the switches — and so what the next tick will do. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from watchdog.core.budgets import Assessment
from watchdog.core.decisions import candidate_of, exempt_from, hold_reason
from watchdog.core.models import TERMINAL
from watchdog.core.policies import Facts, History, evaluate
from watchdog.core.policies import explain as policy_rows
from watchdog.core.pricing import dollars, projected_cost, usd
from watchdog.core.rows import Tracked
from watchdog.settings import Settings


def explained(
    settings: Settings,
    tracked: Tracked,
    next_poll: datetime | None,
    groups: Sequence[Assessment],
    tripped: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The report ``explain --json`` prints (and the text view renders)."""
    view, counts = tracked.view, tracked.view.counts
    history = History(
        finished=None if counts is None else counts.finished,
        at=tracked.last_polled_at,
        progress_at=tracked.progress_at,
    )
    facts = Facts(view, tracked.cost_usd, now, history)
    exempt = exempt_from(tracked, settings.safety.exempt_metadata, now)
    verdict = evaluate(settings.policies, facts, tracked.pending).verdict
    report: dict[str, Any] = {
        "batch_id": view.batch_id,
        "provider": view.provider,
        "status": view.status,
        "request_counts": None if counts is None else counts.as_dict(),
        "cost_usd": usd(tracked.cost_usd),
        "projected_cost_usd": usd(projected_cost(tracked.cost_usd, counts, 1)),
        "last_polled_at": _iso(tracked.last_polled_at),
        "next_poll_at": _iso(next_poll),
        "policies": policy_rows(settings.policies, facts, tracked.pending),
        "budgets": [_budget(one, tracked) for one in groups],
        "exempt": exempt,
        "dry_run": settings.dry_run,
        "safety_tripped": bool(tripped),
        "cancel": {"policy": tracked.cancel_policy, "outcome": tracked.cancel_outcome},
    }
    report["next_tick"] = _next(report, tracked, verdict, settings.safety.exempt_metadata, now)
    return report


def _budget(one: Assessment, tracked: Tracked) -> dict[str, Any]:
    chosen = any((m.view.provider, m.view.batch_id) == tracked.key for m in one.chosen)
    return one.figures().as_dict() | {"this_batch_chosen": chosen}


def _next(
    report: Mapping[str, Any],
    tracked: Tracked,
    verdict: Any,
    exempt_metadata: Mapping[str, str],
    now: datetime,
) -> str:
    """What the next tick will do, judged on what the last poll saw."""
    if tracked.view.status in TERMINAL:
        return f"nothing: {tracked.view.status}, not polled again"
    chosen = next((b["budget"] for b in report["budgets"] if b["this_batch_chosen"]), None)
    if verdict is None and chosen is None:
        return "poll it; no policy holds"
    if verdict is not None and verdict.action == "alert" and chosen is None:
        return f"poll it; alert from {verdict.policy} (recorded once)"
    name = verdict.policy if verdict is not None and verdict.action == "cancel" else chosen
    held = hold_reason(candidate_of(tracked, str(name), exempt_metadata, now))
    held = held or ("dry run" if report["dry_run"] else None)
    held = held or ("safety tripped: alert-only until resume" if report["safety_tripped"] else None)
    return f"hold the cancel from {name}: {held}" if held else f"cancel it ({name})"


def render(report: Mapping[str, Any]) -> str:
    """The text view."""
    counts = report["request_counts"]
    done = f"{counts['completed'] + counts['failed']}/{counts['total']} done" if counts else "-"
    cost = "unknown" if report["cost_usd"] is None else f"${report['cost_usd']:.4f}"
    lines = [
        f"{report['batch_id']} ({report['provider']}): {report['status'] or 'not polled'}, "
        f"{done}, cost {cost}, projected {dollars(report['projected_cost_usd'])}",
        f"polled {report['last_polled_at'] or 'never'}; next poll {report['next_poll_at'] or '-'}",
        "policies (the first that holds acts):",
    ]
    for row in report["policies"]:
        state = "holds" if row["holds"] else "does not hold"
        lines.append(f"  {row['policy']} ({row['action']}): applies {row['applies']}; {state}")
        lines += [f"    {_condition(c)}" for c in row["conditions"]]
        if "for" in row:
            clock = row["for"]
            lines.append(f"    for: {clock['held_s']:.0f}s of {clock['needed_s']:.0f}s")
    for b in report["budgets"]:
        mark = "; this batch would be cancelled" if b["this_batch_chosen"] else ""
        lines.append(
            f"budget {b['budget']}: committed {dollars(b['committed_usd'])} of "
            f"{dollars(b['limit_usd'])} ({b['state']}){mark}"
        )
    lines.append(f"exempt: {report['exempt'] or 'no'}")
    switches = (str(report["dry_run"]).lower(), str(report["safety_tripped"]).lower())
    lines.append(f"dry_run: {switches[0]}; safety tripped: {switches[1]}")
    lines.append(f"next tick: {report['next_tick']}")
    return "\n".join(lines)


def _condition(c: Mapping[str, Any]) -> str:
    if c["observed"] is None:
        return f"{c['condition']} {c['threshold']}: unknown ({c['unknown']})"
    mark = "holds" if c["holds"] else "does not hold"
    return f"{c['condition']} {c['threshold']}: observed {c['observed']} ({mark})"


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
