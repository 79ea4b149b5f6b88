"""What the commands print: tables sized to their cells, the JSON shapes of a batch
and an event, the config in words, the report's and replay's tables. Pure: values in,
text out."""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

from watchdog.core.durations import format_duration, iso

if TYPE_CHECKING:
    from watchdog.core.budgets import Figures
    from watchdog.core.policies import Discovery
    from watchdog.core.rows import Listed
    from watchdog.settings import ProviderSettings, Settings
    from watchdog.views.report import Line, Report


def batch_json(listed: Listed) -> dict[str, Any]:
    """A tracked batch as ``list --json`` prints it."""
    t, view = listed.tracked, listed.tracked.view
    tokens = view.tokens
    usage = None
    if tokens is not None:
        usage = {"input_tokens": tokens.input, "cached_tokens": tokens.cached,
                 "output_tokens": tokens.output, "reasoning_tokens": tokens.reasoning}  # fmt: skip
    return {
        "id": view.batch_id,
        "provider": view.provider,
        "status": view.status,
        "model": view.model,
        "cost_usd": None if t.cost_usd is None else float(t.cost_usd),
        "request_counts": None if view.counts is None else view.counts.as_dict(),
        "usage": usage,
        "created_at": iso(view.created_at),
        "expires_at": iso(view.expires_at),
        "metadata": listed.metadata,
        "labels": listed.labels,
        "matched_policy": t.matched_policy,
        "cancel_policy": t.cancel_policy,
        "cancel_outcome": t.cancel_outcome,
        "tracked_at": iso(t.tracked_at),
        "last_polled_at": iso(t.last_polled_at),
        "next_poll_at": iso(listed.next_poll_at),
        "last_error": t.last_error,
        "exempt_until": iso(t.exempt_until),
        "exempt_reason": t.exempt_reason,
        "pending": {k: iso(v) for k, v in t.pending.items()} or None,
    }


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("batch_id", "provider", "kind", "from_status", "to_status", "policy", "detail")
    return {"at": iso(row["at"]), **{k: row[k] for k in keys}}


def printable(text: str) -> str:
    """A cell fit for a terminal: control characters (escape sequences a provider put in a
    status or an error) shown escaped, never interpreted."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = column_widths(rows, header)
    return "\n".join(table_line(r, widths) for r in [header, *rows])


def batch_table(rows: list[Listed]) -> str:
    from watchdog.core.pricing import dollars, usd

    out = []
    for listed in rows:
        t, view = listed.tracked, listed.tracked.view
        counts = view.counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "-"
        cost = dollars(usd(t.cost_usd), places=4)
        policy = t.cancel_policy or t.matched_policy or "-"
        expires = iso(view.expires_at) or "-"
        out.append([view.batch_id, view.provider, view.status or "(not polled)",
                    view.model or "-", cost, done, expires, policy])  # fmt: skip
    header = ["ID", "PROVIDER", "STATUS", "MODEL", "COST", "DONE", "EXPIRES", "POLICY"]
    return table(out, header) if out else "no batches tracked"


def budget_table(found: list[Figures]) -> str:
    from watchdog.core.pricing import dollars

    money = partial(dollars, unknown="-")
    out = []
    for b in found:
        group = ",".join(f"{k}={v}" for k, v in b.group.items()) or "-"
        state = b.state + (f" ({len(b.to_cancel)} to cancel)" if b.to_cancel else "")
        cells = [b.budget, group, b.window, money(b.spend_usd)]
        cells += [money(b.committed_usd), money(b.limit_usd), str(b.batches)]
        out.append([printable(c) for c in cells] + [str(b.unknown), state])
    header = ["BUDGET", "GROUP", "WINDOW", "SPEND", "COMMITTED", "LIMIT", "BATCHES"]
    return table(out, [*header, "UNKNOWN", "STATE"]) if out else "no budgets configured"


def event_cells(row: dict[str, Any]) -> list[str]:
    e = event_json(row)
    change = f"{e['from_status'] or '-'} -> {e['to_status'] or '-'}"
    detail = json.dumps(e["detail"], separators=(",", ":")) if e["detail"] else ""
    cells = [e["at"], e["provider"], e["batch_id"], e["kind"], change, e["policy"] or ""]
    return [printable("-" if c is None else str(c)) for c in cells] + [printable(detail[:120])]


EVENT_HEADER = ["AT", "PROVIDER", "BATCH", "KIND", "STATUS", "POLICY", "DETAIL"]


def column_widths(rows: list[list[str]], header: list[str]) -> list[int]:
    return [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]


def table_line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _speaks(provider: ProviderSettings) -> str:
    """How the key and version go out, where the config chose them."""
    chosen = [f"auth: {provider.auth}"] if provider.auth else []
    chosen += [f"version: {provider.api_version}"] if provider.api_version else []
    return "".join(f"; {c}" for c in chosen)


def _cannot_judge(name: str, settings: Settings) -> list[str]:
    """What this provider's policies can never hold on, and why (its kind's limits)."""
    cannot = settings.providers[name].cannot_judge()
    found = []
    for policy in settings.policies:
        if policy.match.provider not in (None, name):
            continue
        for condition, why in cannot.items():
            if getattr(policy.when, condition) is not None:
                found.append(f"{policy.name}: {condition} never holds on {name}: {why}")
    return found


def _discovery(discover: Discovery) -> str:
    """What discovery takes in, in words."""
    scope = [f"model={discover.match.model}"] if discover.match.model else []
    scope += [f"metadata.{k}={v}" for k, v in (discover.match.metadata or {}).items()]
    within = format_duration(discover.created_within)
    return f"batches created within {within}" + (f" with {', '.join(scope)}" if scope else "")


def show_config(settings: Settings, path: str, database: str) -> str:
    """The config in words; ``database`` is its URL with the password masked."""
    lines = [
        f"config OK: {path}",
        f"database: {database}" + _source(settings.origin("database_url")),
        f"poll_interval: {format_duration(settings.poll_interval)}",
        f"dry_run: {str(settings.dry_run).lower()}",
        f"safety: at most {settings.safety.max_cancels_per_tick} cancels a tick, "
        f"{settings.safety.max_cancels_per_hour} an hour; exempt metadata "
        f"{settings.safety.exempt_metadata or '(none)'}",
        "retention: "
        + (
            ", ".join(
                f"{kind} after {format_duration(age)}"
                for kind, age in settings.retention.events.items()
                if age is not None
            )
            or "every event kept"
        )
        + f" (pruned every {format_duration(settings.retention.every)})",
        f"http: {settings.http.host}:{settings.http.port}; {_tokens(settings)}",
        f"providers ({len(settings.providers)}):",
    ]
    lines += _providers(settings)
    lines.append(f"pricing ({len(settings.pricing)}, USD per 1M tokens, first match wins):")
    for price in settings.pricing:
        scope = f"{price.provider}/" if price.provider else ""
        lines.append(
            f"  {scope}{price.model}: input {price.input}, cached {price.cached_rate}, "
            f"output {price.output}"
        )
    lines.append(f"policies ({len(settings.policies)}, first match acts):")
    from watchdog.core.policies import describe

    lines.extend(f"  {describe(p)}" for p in settings.policies)
    if settings.budgets:
        lines.append(f"budgets ({len(settings.budgets)}):")
        lines.extend(f"  {b.describe()}" for b in settings.budgets)
    if settings.origins:
        lines.append("overridden, not from the file:")
        lines.extend(f"  {k}: from {v}" for k, v in sorted(settings.origins.items()))
    return "\n".join(lines)


def _providers(settings: Settings) -> list[str]:
    """Each provider: where, how its key and version go out, what it cannot judge."""
    lines = []
    for name, p in settings.providers.items():
        key = "no key"
        if p.api_key_env:
            key = f"key from ${p.api_key_env}"
        elif p.api_key_file:
            key = f"key from {p.api_key_file}"
        lines.append(f"  {name}: {p.base_url} ({key}; api: {p.api}{_speaks(p)})")
        lines += [f"    {line}" for line in _cannot_judge(name, settings)]
        if p.discover is not None:
            lines.append(f"    discovers: {_discovery(p.discover)}")
        lines.append(f"    estimates: {_estimates(settings) if p.estimates else 'off'}")
    return lines


def _estimates(settings: Settings) -> str:
    """How input files are read, in words."""
    from watchdog.core.estimates import BYTES_PER_TOKEN, DEFAULT_OUTPUT

    e = settings.estimate
    counted = [(m.model, m.bytes_per_token, m.max_output_tokens) for m in e.models]
    counted.append(("other models" if counted else "every model", BYTES_PER_TOKEN, DEFAULT_OUTPUT))
    rows = "".join(f"; {name}: {per:g} bytes a token, {out} output tokens unless a request "
                   "says" for name, per, out in counted)  # fmt: skip
    size = e.max_file_bytes.human_readable(decimal=True)
    return f"from input files up to {size}, {e.concurrency} at once{rows}"


def _tokens(settings: Settings) -> str:
    """The API's and the page's tokens by name and role (never a value)."""
    http = settings.http
    found = [f"{t.name} ({t.role})" for t in http.tokens]
    if http.token_env or http.token_file:
        found.insert(0, "page (viewer)")
    return "tokens: " + (", ".join(found) or "none (reads open on loopback only)")


def _source(origin: str) -> str:
    return "" if origin == "file" else f" (from {origin})"


def report_table(found: Report) -> str:
    from watchdog.core.pricing import dollars, usd

    def cells(r: Line) -> list[str]:
        unknown = f" (+{r.unknown_cost} unknown)" if r.unknown_cost else ""
        spend, saved = dollars(usd(r.spend), places=4) + unknown, dollars(usd(r.saved), places=4)
        estimated = (
            f"{dollars(usd(r.estimated_high), places=4)} ({r.estimated})" if r.estimated else "-"
        )
        ratio = "-" if r.cost_to_estimate is None else f"{r.cost_to_estimate:.0%}"
        return [r.day, printable(r.group), str(r.batches), spend, str(r.cancels), saved,
                estimated, ratio]  # fmt: skip

    header = ["DAY", found.by.upper(), "BATCHES", "SPEND", "CANCELS", "SAVED", "ESTIMATED",
              "COST/EST"]  # fmt: skip
    rows = [cells(r) for r in found.rows()]
    return table([*rows, cells(found.totals())], header) if rows else "no batches in the window"


def replay_table(report: dict[str, Any]) -> str:
    from watchdog.core.pricing import dollars

    money = partial(dollars, places=4, unknown="-")
    rows = []
    for line in report["batches"]:
        if line["change"] == "unchanged":
            continue
        old, new = line["recorded"] or {}, line["replayed"] or {}
        cells = [line["batch_id"], line["provider"], line["change"]]
        cells += [old.get("policy") or "-", new.get("policy") or "-", new.get("at") or "-"]
        rows.append([printable(c) for c in cells] + [money(new.get("saves_usd"))])
    t = report["totals"]
    header = ["ID", "PROVIDER", "CHANGE", "WAS", "WOULD BE", "CANCELLED AT", "SAVES"]
    body = table(rows, header) if rows else "no batch would be judged differently"
    summary = (
        f"{t['batches']} batches since {report['since']}: {t['newly_cancelled']} newly "
        f"cancelled, {t['no_longer_cancelled']} no longer cancelled, "
        f"{t['cancelled_at_another_time']} at another time; saved {money(t['saved_usd'])}, "
        f"at risk {money(t['at_risk_usd'])}"
    )
    return "\n".join([body, summary, *(f"note: {n}" for n in report["limits"])])


def estimate_text(said: dict[str, Any] | None) -> str:
    """One line for an estimate (``summary``'s JSON): what the input file says."""
    from watchdog.core.pricing import dollars

    if said is None:
        return "no estimate (no input file read)"
    if "error" in said:
        again = (
            "; tried again at the next poll" if said["temporary"] and said["attempts"] < 3 else ""
        )
        return f"not made: {said['error']}{again}"
    low, high = said["low_usd"], said["high_usd"]
    cost = "cost unknown (a model without a price)" if high is None else (
        f"{dollars(low, places=4)} to {dollars(high, places=4)}")  # fmt: skip
    text = (f"{said['requests']:,} requests ({said['malformed']} malformed), "
            f"~{said['input_tokens']:,} input tokens, output at most "
            f"{said['output_tokens_bound']:,} ({said['output_defaulted']} at the model "
            f"default): {cost} [{said['method']}]")  # fmt: skip
    error = said.get("estimate_error")
    if error:
        where = "within" if error["within_range"] else "outside"
        text += f"; cost {dollars(error['cost_usd'], places=4)}, {where} the range"
    return text
