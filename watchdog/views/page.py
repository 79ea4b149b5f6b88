"""The status page (``GET /``): what the daemon guards, spent and saved, at a glance.
Server-rendered HTML with its CSS inline and its chart as inline SVG — no script, no
build step, nothing fetched from elsewhere. Everything shown is escaped. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from watchdog.core.budgets import Figures
from watchdog.core.durations import iso
from watchdog.core.models import TERMINAL, as_text
from watchdog.core.pricing import dollars
from watchdog.core.rows import Listed

REFRESH_S = 15
# The page runs no script and loads nothing: say so to the browser too.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:12px 16px;display:flex;flex-wrap:wrap;gap:8px 16px;
align-items:center}header h1{font-size:18px;margin:0}main{padding:12px 16px;max-width:1200px}
.chip{border-radius:10px;padding:2px 8px;font-size:12px;background:#2d333b}.bad{background:#b62324}
.ok{background:#1a7f37}.warn{background:#9a6700}section{background:#fff;border:1px solid #d0d7de;
border-radius:6px;margin:12px 0;padding:8px 12px;overflow:hidden}h2{font-size:15px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%;table-layout:fixed}th,td{text-align:left;
padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top;overflow-wrap:anywhere}
th{font-size:13px;overflow-wrap:normal}
.kv{display:inline-block;max-width:100%;background:#eaeef2;border-radius:3px;padding:0 4px;
margin:1px 2px 1px 0;font-size:12px;overflow-wrap:anywhere}
.bar{background:#eaeef2;border-radius:3px;height:8px;min-width:60px;position:relative}
.bar span{display:block;height:8px;border-radius:3px;background:#0969da}
.bar span.over{background:#b62324}.tiles{display:flex;flex-wrap:wrap;gap:12px}
.tile{flex:1 1 140px}.tile b{display:block;font-size:20px}svg text{font-size:10px;fill:#57606a}
@media (max-width:700px){main{padding:8px}section{padding:6px 8px}
table,tbody,tr,td{display:block;width:auto}thead{display:none}
tr{border-bottom:1px solid #d0d7de;padding:6px 0}td{border:0;padding:1px 0}
td::before{content:attr(data-label);display:inline-block;min-width:84px;color:#57606a}}
"""
COLOURS = ("#0969da", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#57606a")


@dataclass
class Status:
    """Everything the page shows, gathered by the service."""

    now: datetime
    batches: Sequence[Listed] = ()
    events: Sequence[Mapping[str, Any]] = ()
    budgets: Sequence[Figures] = ()
    spend_by_day: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    saved_usd: float = 0.0
    tracked: int = 0  # all tracked batches (the table shows a bounded few)
    running: int = 0
    known_spend_usd: float = 0.0
    providers: Mapping[str, bool] = field(default_factory=dict)
    safety_tripped: bool = False
    dry_run: bool = False
    totals_at: datetime | None = None  # when the counts and the spend were summed


AGE = datetime.max.replace(tzinfo=UTC)  # render for any viewer: the age left to fill in
AGE_TEXT = "\x00age\x00"


def age_of(s: Status, viewed: datetime) -> str:
    """How old the snapshot (and its totals) is to someone viewing it at ``viewed``."""
    text = f"{max((viewed - s.now).total_seconds(), 0):.0f}s ago"
    if s.totals_at is not None:
        text += f"; totals {max((viewed - s.totals_at).total_seconds(), 0):.0f}s ago"
    return escape(text)


def render_page(s: Status, viewed: datetime | None = None) -> str:
    """The whole page, as of ``s.now``, viewed at ``viewed`` (its age is said; at
    ``AGE``, left as ``AGE_TEXT`` for the viewer's time to fill in)."""
    return "".join(
        [
            "<!doctype html><html lang=en><head><meta charset=utf-8>",
            '<meta name=viewport content="width=device-width,initial-scale=1">',
            f'<meta http-equiv=refresh content="{REFRESH_S}">',
            f"<title>batch-watchdog</title><style>{CSS}</style></head><body>",
            _header(s, viewed or s.now),
            "<main>",
            _totals(s),
            _budgets(s.budgets),
            _chart(s.spend_by_day),
            _batches(s.batches, s.now),
            _events(s.events),
            "</main></body></html>",
        ]
    )


def esc(value: Any) -> str:
    return escape("-" if value is None else str(value), quote=True)


def _header(s: Status, viewed: datetime) -> str:
    chips = [
        '<span class="chip bad">safety tripped: alert-only</span>'
        if s.safety_tripped
        else '<span class="chip ok">safety ok</span>',
        '<span class="chip warn">dry run</span>' if s.dry_run else "",
    ]
    for name, up in sorted(s.providers.items()):
        kind = "ok" if up else "bad"
        chips.append(
            f'<span class="chip {kind}">{esc(name)}: {"up" if up else "unavailable"}</span>'
        )
    when = esc(iso(s.now, "seconds"))
    age = AGE_TEXT if viewed == AGE else age_of(s, viewed)
    return (
        f"<header><h1>batch-watchdog</h1>{''.join(chips)}"
        f'<span title="snapshot taken at {when}">as of {when} ({age})</span></header>'
    )


def _totals(s: Status) -> str:
    tiles = [
        ("tracked", str(s.tracked)),
        ("running", str(s.running)),
        ("known spend", dollars(s.known_spend_usd)),
        ("saved by cancels (14 d)", dollars(s.saved_usd)),
    ]
    cells = "".join(f'<div class="tile">{esc(k)}<b>{esc(v)}</b></div>' for k, v in tiles)
    return f'<section><div class="tiles">{cells}</div></section>'


def _bar(fraction: float, over: bool = False) -> str:
    width = max(0.0, min(fraction, 1.0)) * 100
    kind = "over" if over else ""
    return f'<div class="bar"><span class="{kind}" style="width:{width:.0f}%"></span></div>'


def table_html(
    columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]], empty: str
) -> str:
    """A table of cells (already HTML) in columns of fixed shares of the card (name,
    weight), so that nothing runs out of it: a value too long for its column wraps.
    On a phone each row becomes a block of labelled lines (CSS only, no script)."""
    total = sum(weight for _, weight in columns)
    cols = "".join(f'<col style="width:{100 * w / total:.1f}%">' for _, w in columns)
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in columns)
    body = [
        "<tr>"
        + "".join(
            f'<td data-label="{esc(name)}">{cell}</td>'
            for (name, _), cell in zip(columns, row, strict=True)
        )
        + "</tr>"
        for row in rows
    ]
    if not body:
        body = [f'<tr><td colspan="{len(columns)}">{esc(empty)}</td></tr>']
    return (
        f"<table><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _pairs(mapping: Mapping[str, Any] | None) -> str:
    """Key=value chips that wrap between pairs, never mid-pair unless one is too long."""
    return "".join(
        f'<span class="kv">{esc(k)}={esc(as_text(v))}</span>' for k, v in (mapping or {}).items()
    )


def _budgets(budgets: Sequence[Figures]) -> str:
    if not budgets:
        return ""
    rows = []
    for b in budgets:
        share = (b.committed_usd or 0) / (b.limit_usd or 1)
        rows.append(
            [
                esc(b.budget),
                _pairs(b.group) or "all",
                esc(dollars(b.spend_usd)),
                f"{esc(dollars(b.committed_usd))} of {esc(dollars(b.limit_usd))}"
                f"{_bar(share, b.state == 'over')}",
                esc(b.state),
            ]
        )
    columns = (("budget", 3), ("group", 3), ("spend", 2), ("committed", 4), ("state", 1))
    table = table_html(columns, rows, "no budgets")
    return f"<section><h2>Budgets</h2>{table}</section>"


def _chart(by_day: Mapping[str, Mapping[str, float]]) -> str:
    """Spend per day, stacked by provider, as an inline SVG bar chart."""
    days = sorted(by_day)[-14:]
    if not days:
        return "<section><h2>Spend per day</h2><p>no spend recorded yet</p></section>"
    providers = sorted({p for d in days for p in by_day[d]})
    top = max(sum(by_day[d].values()) for d in days) or 1.0
    width, height, step = 40 * len(days) + 40, 160, 40
    parts = [
        f'<svg role="img" aria-label="spend per day" viewBox="0 0 {width} {height + 30}" '
        f'width="100%" height="{height + 30}">'
    ]
    for i, day in enumerate(days):
        y = float(height)
        for j, provider in enumerate(providers):
            h = by_day[day].get(provider, 0.0) / top * (height - 10)
            y -= h
            colour = COLOURS[j % len(COLOURS)]
            title = f"{day} {provider}: {dollars(by_day[day].get(provider, 0.0))}"
            parts.append(
                f'<rect x="{30 + i * step}" y="{y:.1f}" width="28" height="{h:.1f}" '
                f'fill="{colour}"><title>{esc(title)}</title></rect>'
            )
        parts.append(f'<text x="{30 + i * step}" y="{height + 14}">{esc(day[5:])}</text>')
    parts.append(f'<text x="0" y="10">{esc(dollars(top))}</text></svg>')
    legend = " ".join(
        f'<span style="color:{COLOURS[j % len(COLOURS)]}">&#9632;</span> {esc(p)}'
        for j, p in enumerate(providers)
    )
    return f"<section><h2>Spend per day</h2>{''.join(parts)}<div>{legend}</div></section>"


def _batches(batches: Sequence[Listed], now: datetime) -> str:
    rows = []
    for b in batches:
        t, view = b.tracked, b.tracked.view
        counts = view.counts
        total = counts.total if counts else 0
        done = counts.completed + counts.failed if counts else 0
        progress = f"{_bar(done / total)} {done}/{total}" if total else "-"
        cost = "unknown" if t.cost_usd is None else dollars(float(t.cost_usd))
        rows.append(
            [
                f'<a href="/batches/{quote(view.provider)}/{quote(view.batch_id)}">'
                f"{esc(view.batch_id)}</a>",
                esc(view.provider),
                esc(view.status or "not polled"),
                esc(view.model),
                esc(cost),
                progress,
                esc(_until(view.expires_at, now, view.status)),
                esc(t.cancel_policy or t.matched_policy),
                esc(t.exempt_reason or ""),
                _pairs(b.metadata) + _pairs({f"label.{k}": v for k, v in (b.labels or {}).items()}),
            ]
        )
    columns = (("batch", 16), ("provider", 8), ("status", 9), ("model", 15), ("cost", 7),
               ("progress", 11), ("expires", 7), ("policy", 8), ("exempt", 7),
               ("metadata", 12))  # fmt: skip
    table = table_html(columns, rows, "no batches tracked")
    return f"<section><h2>Batches</h2>{table}</section>"


def _events(events: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            esc(iso(e["at"], "seconds")),
            esc(e["kind"]),
            esc(e["batch_id"]),
            esc(e["policy"]),
            _pairs(e["detail"]),
        ]
        for e in events
    ]
    columns = (("at", 14), ("event", 12), ("batch", 18), ("policy", 10), ("detail", 46))
    table = table_html(columns, rows, "no events yet")
    return f"<section><h2>Last events</h2>{table}</section>"


def _until(expires: datetime | None, now: datetime, status: str | None) -> str:
    if expires is None or status in TERMINAL:
        return "-"
    left = (expires - now).total_seconds()
    if left <= 0:
        return "expired"
    hours, rest = divmod(int(left), 3600)
    return f"{hours}h{rest // 60:02d}m"
