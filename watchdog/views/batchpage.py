"""A batch's own page (``/batches/{provider}/{id}``): its timeline drawn from the
recorded samples (cost and progress over time, as inline SVG, with each applying cost
threshold drawn on it), its explanation and its events. Pure: values in, HTML out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from watchdog.core.durations import iso
from watchdog.core.models import Tokens
from watchdog.core.pricing import Price, batch_cost, dollars
from watchdog.core.rows import Listed
from watchdog.views.explain import Explanation, explanation_text
from watchdog.views.page import CSS, esc, table_html

WIDTH, HEIGHT, PAD = 640, 200, 40
COST_THRESHOLDS = ("cost_usd_above", "projected_cost_usd_above")


@dataclass(frozen=True, slots=True)
class Point:
    at: datetime
    cost: float | None  # USD, from the sample's tokens and the pricing
    done: float | None  # the share of requests finished, 0..1


def points(
    samples: Sequence[Mapping[str, Any]], listed: Listed, pricing: Sequence[Price]
) -> list[Point]:
    """The timeline: each sample's cost (its tokens priced as the daemon prices them)
    and progress."""
    view, found = listed.tracked.view, []
    for s in samples:
        tokens = None
        if s.get("input_tokens") is not None and s.get("output_tokens") is not None:
            tokens = Tokens(s["input_tokens"], s.get("cached_tokens") or 0,
                            s["output_tokens"], s.get("reasoning_tokens") or 0)  # fmt: skip
        cost = batch_cost(pricing, view.provider, view.model, tokens)
        total = s.get("request_total") or 0
        done = ((s.get("request_completed") or 0) + (s.get("request_failed") or 0)) / total
        found.append(Point(s["at"], None if cost is None else float(cost), done if total else None))
    return found


def thresholds(explanation: Explanation) -> list[tuple[str, float]]:
    """The lines to draw: the cost thresholds of the policies that apply to this batch,
    and its share of each budget it counts in (what it may cost before the group's
    committed amount reaches the limit, the others' as they stand): (label, USD)."""
    found = [
        (row.policy, float(c.threshold))
        for row in explanation.policies
        if row.applies == "yes"
        for c in row.conditions
        if c.condition in COST_THRESHOLDS and isinstance(c.threshold, int | float)
    ]
    mine = explanation.projected_cost_usd or explanation.cost_usd or 0.0
    for row in explanation.budgets:
        f = row.figures
        if f.limit_usd is not None and f.committed_usd is not None:
            share = f.limit_usd - (f.committed_usd - mine)
            found.append((f"budget {f.budget}: this batch's share", max(share, 0.0)))
    return found


def timeline(found: Sequence[Point], lines: Sequence[tuple[str, float]]) -> str:
    """Cost (a solid line, left scale) and progress (dashed, 0-100 %) over time, each
    threshold a labelled horizontal line."""
    if len(found) < 2:
        return "<p>not enough samples yet to draw a timeline</p>"
    start, end = found[0].at.timestamp(), found[-1].at.timestamp()
    span = max(end - start, 1.0)
    top = max([p.cost or 0.0 for p in found] + [v for _, v in lines] + [0.01]) * 1.1

    def x(p: Point) -> float:
        return PAD + (p.at.timestamp() - start) / span * (WIDTH - 2 * PAD)

    def y(share: float) -> float:
        return HEIGHT - PAD / 2 - share * (HEIGHT - PAD)

    cost = " ".join(f"{x(p):.1f},{y((p.cost or 0) / top):.1f}" for p in found if p.cost is not None)
    done = " ".join(f"{x(p):.1f},{y(p.done):.1f}" for p in found if p.done is not None)
    parts = [f'<svg role="img" aria-label="cost and progress over time" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%">']  # fmt: skip
    for name, value in lines:
        at = y(value / top)
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{at:.1f}" y2="{at:.1f}" '
                     'stroke="#b91c1c" stroke-dasharray="2 3"/>'
                     f'<text x="{PAD}" y="{at - 3:.1f}" font-size="10" fill="#b91c1c">'
                     f"{esc(name)} {esc(dollars(value))}</text>")  # fmt: skip
    if cost:
        parts.append(f'<polyline fill="none" stroke="#1d4ed8" stroke-width="2" points="{cost}"/>')
    if done:
        parts.append(f'<polyline fill="none" stroke="#15803d" stroke-dasharray="4 2" '
                     f'points="{done}"/>')  # fmt: skip
    parts.append(f'<text x="{PAD}" y="12" font-size="10">cost (solid, up to '
                 f"{esc(dollars(top))}) · progress (dashed, 0-100 %) · "
                 f"{esc(iso(found[0].at, 'minutes'))} → "
                 f"{esc(iso(found[-1].at, 'minutes'))}</text></svg>")  # fmt: skip
    return "".join(parts)


def render_batch(
    listed: Listed,
    explanation: Explanation,
    events: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    pricing: Sequence[Price],
    actions: str = "",
) -> str:
    view = listed.tracked.view
    title = f"{view.provider}/{view.batch_id}"
    rows = [[esc(iso(e["at"], "seconds")), esc(e["kind"]), esc(e["policy"]),
             esc(e["detail"])] for e in list(events)[-100:]]  # fmt: skip
    columns = (("at", 14), ("event", 12), ("policy", 10), ("detail", 64))
    return "".join([
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{esc(title)} · batch-watchdog</title><style>{CSS}</style></head><body>",
        f'<header><h1>{esc(title)}</h1><p><a href="/">all batches</a></p></header><main>',
        "<section><h2>Timeline</h2>",
        timeline(points(samples, listed, pricing), thresholds(explanation)), "</section>",
        f"<section><h2>What the next tick will do</h2><pre>{esc(explanation_text(explanation))}"
        "</pre></section>",
        actions,
        f"<section><h2>Events</h2>{table_html(columns, rows, 'no events')}</section>",
        "</main></body></html>",
    ])  # fmt: skip


SPANS = ("1h", "2h", "8h", "24h", "7d")


def actions_html(provider: str, batch_id: str, csrf: str, exempt: bool) -> str:
    """An operator's forms for this batch (plain HTML: no script, posted to this site
    with the session's CSRF field); each asks why."""
    base = f"/actions/batches/{quote(provider)}/{quote(batch_id)}"

    def form(action: str, label: str, extra: str = "") -> str:
        return (f'<form method="post" action="{base}/{action}">'
                f'<input type="hidden" name="csrf" value="{esc(csrf)}">{extra}'
                '<input name="reason" required maxlength="500" placeholder="why" '
                f'aria-label="reason"><button type="submit">{esc(label)}</button>'
                "</form>")  # fmt: skip

    spans = "".join(f"<option>{s}</option>" for s in SPANS)
    forms = [form("unexempt", "Lift the silence") if exempt else
             form("exempt", "Exempt", f'<select name="for" aria-label="for">{spans}</select>'),
             form("cancel", "Cancel now", '<label><input type="checkbox" name="confirm" '
                  'required> sure</label>'),
             form("untrack", "Untrack")]  # fmt: skip
    return f"<section><h2>Act</h2>{''.join(forms)}</section>"


def resume_html(csrf: str) -> str:
    """The form that ends a safety trip (on the status page, for an operator)."""
    return ('<section><h2>Safety</h2><form method="post" action="/actions/resume">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            '<input name="reason" required maxlength="500" placeholder="why" aria-label="reason">'
            "<button type=\"submit\">Resume cancels</button></form></section>")  # fmt: skip


def login_html(failed: bool = False) -> str:
    note = "<p>unknown token</p>" if failed else ""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>log in · batch-watchdog</title><style>{CSS}</style></head><body><main>"
            f'<section><h2>Log in</h2>{note}<form method="post" action="/login">'
            '<input name="token" type="password" required aria-label="token" '
            'autocomplete="current-password"><button type="submit">Log in</button>'
            "</form></section></main></body></html>")  # fmt: skip
