"""Command line: parses arguments, calls into app, prints. Exit codes: 0 ok, 2 usage,
78 config error, 1 anything else; errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from watchdog.clock import utcnow
from watchdog.core.durations import format_duration, parse_duration, parse_time
from watchdog.core.events import Kind

if TYPE_CHECKING:
    from watchdog.core.policies import Discovery
    from watchdog.settings import ProviderSettings, Settings

# Settings, logging and watchdog.app (with the database, HTTP and scheduler libraries)
# are imported by the commands that use them: `--help` and argument errors answer at once.

EX_OK, EX_ERROR, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
KINDS = [str(kind) for kind in Kind]
HEAD_ROWS = 200  # a streamed table's columns are as wide as its first rows need


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="YAML config (default: $WATCHDOG_CONFIG or config/watchdog.yaml)",
    )
    parser = Parser(
        prog="batch-watchdog",
        description="Guards LLM batch jobs: polls them, "
        "judges them against YAML policies, cancels the ones that break one.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--once", action="store_true", help="one full tick, then exit")
    run.add_argument("--dry-run", action="store_true", help="judge and record, never cancel")
    sub.add_parser("migrate", parents=[common], help="bring the database schema to head")
    track = sub.add_parser("track", parents=[common], help="start tracking a batch")
    track.add_argument("batch_id", metavar="ID")
    track.add_argument("--provider", required=True, metavar="NAME")
    track.add_argument("--label", action="append", default=[], metavar="K=V")
    untrack = sub.add_parser("untrack", parents=[common], help="stop tracking (history kept)")
    untrack.add_argument("batch_id", metavar="ID")
    untrack.add_argument("--provider", metavar="NAME")
    lister = sub.add_parser("list", parents=[common], help="tracked batches")
    lister.add_argument("--status", metavar="S")
    lister.add_argument("--json", action="store_true")
    events = sub.add_parser("events", parents=[common], help="the audit log, streamed")
    events.add_argument("batch_id", nargs="?", metavar="ID")
    events.add_argument("--provider", metavar="NAME")
    events.add_argument(
        "--kind", action="append", default=[], choices=KINDS, metavar="KIND", help="repeatable"
    )
    events.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--until", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--limit", type=_positive, metavar="N", help="the newest N")
    events.add_argument("--json", action="store_true", help="a JSON array, written as it comes")
    exempt = sub.add_parser("exempt", parents=[common], help="never cancel a batch for a while")
    exempt.add_argument("batch_id", metavar="ID")
    exempt.add_argument("--provider", metavar="NAME")
    exempt.add_argument(
        "--for", dest="duration", required=True, metavar="DURATION", type=_duration, help="e.g. 2h"
    )
    exempt.add_argument("--reason", required=True, metavar="TEXT")
    unexempt = sub.add_parser("unexempt", parents=[common], help="lift a silence")
    unexempt.add_argument("batch_id", metavar="ID")
    unexempt.add_argument("--provider", metavar="NAME")
    report = sub.add_parser("report", parents=[common], help="spend and savings per group and day")
    report.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    groups = "provider, model, policy or metadata.KEY"
    report.add_argument("--by", type=_by, default="provider", metavar="GROUP", help=groups)
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    replay = sub.add_parser(
        "replay", parents=[common], help="judge recorded history again with this config"
    )
    replay.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    replay.add_argument("--json", action="store_true")
    explain = sub.add_parser("explain", parents=[common], help="what the next tick will do")
    explain.add_argument("batch_id", metavar="ID")
    explain.add_argument("--provider", metavar="NAME")
    explain.add_argument("--json", action="store_true")
    budgets = sub.add_parser("budgets", parents=[common], help="spend against each budget")
    budgets.add_argument("--json", action="store_true")
    sub.add_parser("resume", parents=[common], help="end a safety trip (alert-only mode)")
    sub.add_parser("check-config", parents=[common], help="validate and show the config")
    tests = sub.add_parser("test-policies", help="check policies against scripted timelines")
    tests.add_argument("files", nargs="+", metavar="FILE", help="YAML policy tests")
    sim = sub.add_parser("simulate", parents=[common], help="serve the simulated batch API")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089)
    sim.add_argument("--scenario", choices=["empty", "demo"], default="demo")
    sim.add_argument("--api", type=_api, default="openai", metavar="KIND", help="dialect to serve")
    demo = sub.add_parser("demo", parents=[common], help="simulator + daemon, end to end")
    demo.add_argument("--duration", type=float, default=45.0, metavar="SECONDS")
    return parser


def _when(text: str) -> datetime:
    """A moment: a duration ago (``7d``), or an ISO 8601 time (UTC unless it says)."""
    try:
        return utcnow() - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (7d, 12h) nor an ISO 8601 time"
        ) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def load(args: argparse.Namespace) -> Settings:
    from watchdog.daemon import logs
    from watchdog.settings import config_path, load_settings

    settings = load_settings(config_path(args.config, os.environ))
    # The redactor goes with the command's arguments to whatever reads secrets (run).
    args.redact = logs.configure(settings.log_level, settings.log_format)
    return settings


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def batch_json(row: dict[str, Any]) -> dict[str, Any]:
    counts = None
    if row["request_total"] is not None:
        counts = {
            "total": row["request_total"],
            "completed": row["request_completed"],
            "failed": row["request_failed"],
        }
    usage = None
    if row["input_tokens"] is not None:
        usage = {
            k: row[k]
            for k in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
        }
    return {
        "id": row["batch_id"],
        "provider": row["provider"],
        "status": row["status"],
        "model": row["model"],
        "cost_usd": None if row["cost_usd"] is None else float(row["cost_usd"]),
        "request_counts": counts,
        "usage": usage,
        "created_at": iso(row["created_at"]),
        "expires_at": iso(row["expires_at"]),
        "metadata": row["metadata"],
        "labels": row["labels"],
        "matched_policy": row["matched_policy"],
        "cancel_policy": row["cancel_policy"],
        "cancel_outcome": row["cancel_outcome"],
        "tracked_at": iso(row["tracked_at"]),
        "last_polled_at": iso(row["last_polled_at"]),
        "next_poll_at": iso(row["next_poll_at"]),
        "last_error": row["last_error"],
        "exempt_until": iso(row["exempt_until"]),
        "exempt_reason": row["exempt_reason"],
        "pending": row["pending"],
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
    widths = _widths(rows, header)
    return "\n".join(_line(r, widths) for r in [header, *rows])


def batch_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for b in map(batch_json, rows):
        counts = b["request_counts"]
        done = f"{counts['completed'] + counts['failed']}/{counts['total']}" if counts else "-"
        cost = "unknown" if b["cost_usd"] is None else f"${b['cost_usd']:.4f}"
        policy = b["cancel_policy"] or b["matched_policy"] or "-"
        out.append(
            [
                b["id"],
                b["provider"],
                b["status"] or "(not polled)",
                b["model"] or "-",
                cost,
                done,
                b["expires_at"] or "-",
                policy,
            ]
        )
    header = ["ID", "PROVIDER", "STATUS", "MODEL", "COST", "DONE", "EXPIRES", "POLICY"]
    return table(out, header) if out else "no batches tracked"


def budget_table(found: list[dict[str, Any]]) -> str:
    from watchdog.core.pricing import dollars

    money = partial(dollars, unknown="-")
    out = []
    for b in found:
        group = ",".join(f"{k}={v}" for k, v in b["group"].items()) or "-"
        unknown = b["unknown_cost"] + b["unknown_remaining"]
        state = b["state"] + (f" ({len(b['to_cancel'])} to cancel)" if b["to_cancel"] else "")
        cells = [b["budget"], group, b["window"], money(b["spend_usd"])]
        cells += [money(b["committed_usd"]), money(b["limit_usd"]), str(b["batches"])]
        out.append([printable(c) for c in cells] + [str(unknown), state])
    header = ["BUDGET", "GROUP", "WINDOW", "SPEND", "COMMITTED", "LIMIT", "BATCHES"]
    return table(out, [*header, "UNKNOWN", "STATE"]) if out else "no budgets configured"


def event_cells(row: dict[str, Any]) -> list[str]:
    e = event_json(row)
    change = f"{e['from_status'] or '-'} -> {e['to_status'] or '-'}"
    detail = json.dumps(e["detail"], separators=(",", ":")) if e["detail"] else ""
    cells = [e["at"], e["provider"], e["batch_id"], e["kind"], change, e["policy"] or ""]
    return [printable("-" if c is None else str(c)) for c in cells] + [printable(detail[:120])]


EVENT_HEADER = ["AT", "PROVIDER", "BATCH", "KIND", "STATUS", "POLICY", "DETAIL"]


async def write_events(rows: AsyncIterator[dict[str, Any]], as_json: bool) -> None:
    """Print events as they come: a JSON array, or a table whose columns are as wide
    as its first rows need (memory does not grow with the number of events)."""
    out, first = sys.stdout, True
    if as_json:
        out.write("[")
        async for row in rows:
            out.write(("\n  " if first else ",\n  ") + json.dumps(event_json(row), default=str))
            first = False
        out.write("\n]\n" if not first else "]\n")
        return
    head: list[list[str]] = []
    async for row in rows:
        if len(head) < HEAD_ROWS:
            head.append(event_cells(row))
            continue
        if first:
            widths = _widths(head, EVENT_HEADER)
            out.write(_line(EVENT_HEADER, widths) + "\n")
            out.writelines(_line(r, widths) + "\n" for r in head)
            first = False
        out.write(_line(event_cells(row), widths) + "\n")
    if first:
        print(table(head, EVENT_HEADER) if head else "no events")


def _widths(rows: list[list[str]], header: list[str]) -> list[int]:
    return [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _speaks(provider: ProviderSettings) -> str:
    """How the key and version go out, where the config chose them."""
    chosen = [f"auth: {provider.auth}"] if provider.auth else []
    chosen += [f"version: {provider.api_version}"] if provider.api_version else []
    return "".join(f"; {c}" for c in chosen)


def _cannot_judge(name: str, api: str, settings: Settings) -> list[str]:
    """What this provider's policies can never hold on, and why (its kind's limits)."""
    from watchdog.providers.dialects import KINDS

    cannot = KINDS[api].cannot()
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


def show_config(settings: Settings, path: str) -> str:
    from watchdog import app

    lines = [
        f"config OK: {path}",
        f"database: {app.redact_url(settings.database_url)}"
        + _source(settings.origin("database_url")),
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
        f"providers ({len(settings.providers)}):",
    ]
    for name, p in settings.providers.items():
        key = "no key"
        if p.api_key_env:
            key = f"key from ${p.api_key_env}"
        elif p.api_key_file:
            key = f"key from {p.api_key_file}"
        lines.append(f"  {name}: {p.base_url} ({key}; api: {p.api}{_speaks(p)})")
        lines += [f"    {line}" for line in _cannot_judge(name, p.api, settings)]
        if p.discover is not None:
            lines.append(f"    discovers: {_discovery(p.discover)}")
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


def _source(origin: str) -> str:
    return "" if origin == "file" else f" (from {origin})"


def dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def command(args: argparse.Namespace) -> int:
    """Run one command; exceptions map to exit codes in main()."""
    if args.command == "simulate":
        from watchdog.sim.demo import serve_simulator

        asyncio.run(serve_simulator(args.host, args.port, args.scenario, args.api))
        return EX_OK
    if args.command == "demo":
        from watchdog.sim.demo import run_demo

        rows = run_demo(args.config, args.duration)
        print(batch_table(rows))
        print(
            "\nThe demo's database was temporary. Against a real provider: copy "
            "config/watchdog.example.yaml, then `batch-watchdog track ID --provider NAME` "
            "and `batch-watchdog run`."
        )
        return EX_OK
    if args.command == "test-policies":
        return _test_policies(args.files)
    settings = load(args)
    handler = HANDLERS[args.command]
    return handler(settings, args)


def _test_policies(files: list[str]) -> int:
    """Each file's failing expectations; 1 if any failed, 0 when all hold."""
    from watchdog.views import policytests

    failed = 0
    for name in files:
        test, settings = policytests.load(Path(name))
        failures = policytests.run(test, settings)
        failed += len(failures)
        for line in failures:
            print(f"FAIL {name}: {printable(line)}")
        held = len(test.expect) - len(failures)
        print(f"{'ok  ' if not failures else 'FAIL'} {name}: {held}/{len(test.expect)} hold")
    return 1 if failed else EX_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.settings import config_path

    path = config_path(args.config, os.environ)
    asyncio.run(
        app.run(settings, once=args.once, dry_run=args.dry_run, config=path, redact=args.redact)
    )
    return EX_OK


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    current, head = asyncio.run(app.migrate(settings))
    print(f"database schema at {current} (head {head})")
    return EX_OK


def _track(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    added = asyncio.run(app.track(settings, args.batch_id, args.provider, args.label))
    print(
        f"tracking {args.provider}/{args.batch_id}"
        if added
        else f"already tracking {args.provider}/{args.batch_id}"
    )
    return EX_OK


def _untrack(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    removed = asyncio.run(app.untrack(settings, args.batch_id, args.provider))
    if not removed:
        print(f"error: batch {args.batch_id!r} is not tracked", file=sys.stderr)
        return EX_ERROR
    for provider in removed:
        print(f"stopped tracking {provider}/{args.batch_id} (events kept)")
    return EX_OK


def _exempt(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    done = asyncio.run(
        app.exempt(settings, args.batch_id, args.provider, args.duration, args.reason)
    )
    return _report(done, args.batch_id, f"exempt for {format_duration(args.duration)}")


def _unexempt(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    done = asyncio.run(app.exempt(settings, args.batch_id, args.provider, None, None))
    return _report(done, args.batch_id, "no longer exempt")


def _report(providers: list[str], batch_id: str, what: str) -> int:
    if not providers:
        print(f"error: batch {batch_id!r} is not tracked", file=sys.stderr)
        return EX_ERROR
    for provider in providers:
        print(f"{provider}/{batch_id}: {what}")
    return EX_OK


def _resume(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    resumed = asyncio.run(app.resume(settings))
    print(
        "safety trip ended: cancels resume on the next tick"
        if resumed
        else "no safety trip in force"
    )
    return EX_OK


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    rows = asyncio.run(app.list_batches(settings, args.status))
    print(dump([batch_json(r) for r in rows]) if args.json else batch_table(rows))
    return EX_OK


def _events(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    wanted = app.EventFilter(
        batch_id=args.batch_id,
        provider=args.provider,
        kinds=tuple(args.kind),
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    asyncio.run(write_events(app.stream_events(settings, wanted), args.json))
    return EX_OK


def _api(text: str) -> str:
    from watchdog.providers.dialects import KINDS

    if text not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown api {text!r}; valid: {', '.join(KINDS)}")
    return text


def _by(text: str) -> str:
    from watchdog.views.report import check_by

    try:
        return check_by(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--by {text!r}: ")) from None


def _spend_report(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    since = args.since or utcnow() - timedelta(days=7)
    found = asyncio.run(app.report(settings, since, args.by))
    if args.json:
        print(dump(found))
    elif args.csv:
        write_csv(found)
    else:
        print(report_table(found))
    return EX_OK


def write_csv(found: dict[str, Any]) -> None:
    import csv

    fields = ["day", "group", "batches", "spend_usd", "unknown_cost", "cancels", "saved_usd"]
    out = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    out.writeheader()
    out.writerows([*found["rows"], found["totals"]])


def report_table(found: dict[str, Any]) -> str:
    def cells(r: dict[str, Any]) -> list[str]:
        unknown = f" (+{r['unknown_cost']} unknown)" if r["unknown_cost"] else ""
        spend, saved = f"${r['spend_usd']:,.4f}{unknown}", f"${r['saved_usd']:,.4f}"
        return [r["day"], printable(r["group"]), str(r["batches"]), spend, str(r["cancels"]), saved]

    header = ["DAY", found["by"].upper(), "BATCHES", "SPEND", "CANCELS", "SAVED"]
    rows = [cells(r) for r in found["rows"]]
    return table([*rows, cells(found["totals"])], header) if rows else "no batches in the window"


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    """Streamed: ``--json`` prints each batch's line as it is judged; the table keeps
    only the batches judged differently (memory does not grow with the window)."""
    from watchdog import app
    from watchdog.views.replay import Tally

    now = utcnow()
    since = args.since or now - timedelta(days=7)
    tally, changed = Tally(), []

    async def judged() -> None:
        first = True
        async for line in app.replay_lines(settings, since, now):
            tally.add(line)
            if args.json:
                sys.stdout.write(("" if first else ",\n") + json.dumps(line, default=str))
                first = False
            elif line["change"] != "unchanged":
                changed.append(line)

    if args.json:
        sys.stdout.write(json.dumps({"since": since.isoformat()})[:-1] + ', "batches": [\n')
    asyncio.run(judged())
    report = {"since": since.isoformat(), "batches": changed, "totals": tally.as_dict(),
              "limits": app.REPLAY_LIMITS}  # fmt: skip
    if args.json:
        tail = {"totals": report["totals"], "limits": report["limits"]}
        print("\n], " + json.dumps(tail)[1:])
    else:
        print(replay_table(report))
    return EX_OK


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


def _explain(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.views.explain import render

    now = utcnow()
    report = asyncio.run(app.explain(settings, args.batch_id, args.provider, now))
    print(dump(report) if args.json else "\n".join(map(printable, render(report).split("\n"))))
    return EX_OK


def _budgets(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    found = [a.summary() for a in asyncio.run(app.budgets(settings, utcnow()))]
    print(dump(found) if args.json else budget_table(found))
    return EX_OK


def _check_config(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.settings import config_path

    app.check_keys(settings)  # what `run` checks, so that OK here means `run` starts
    print(show_config(settings, str(config_path(args.config, os.environ))))
    return EX_OK


HANDLERS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": _run,
    "migrate": _migrate,
    "track": _track,
    "untrack": _untrack,
    "list": _list,
    "events": _events,
    "exempt": _exempt,
    "unexempt": _unexempt,
    "resume": _resume,
    "check-config": _check_config,
    "budgets": _budgets,
    "explain": _explain,
    "replay": _replay,
    "report": _spend_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line, never a traceback, for any failure
        return failure(exc)


def failure(exc: Exception) -> int:
    """The exit code and one line for a command that failed."""
    settings = sys.modules.get("watchdog.settings")  # loaded by whatever raises these
    if settings is not None and isinstance(exc, settings.ConfigError):
        print(f"config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    known = sys.modules.get("watchdog.app")
    if known is not None and isinstance(exc, known.UsageError):
        print(f"error: {exc}", file=sys.stderr)
        return EX_USAGE
    if known is not None and isinstance(
        exc, known.AlreadyRunning | known.SchemaError | known.DatabaseMissing
    ):
        print(f"error: {exc}", file=sys.stderr)
        return EX_ERROR
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    print(f"error: {message[:500]}", file=sys.stderr)
    return EX_ERROR


if __name__ == "__main__":
    sys.exit(main())
