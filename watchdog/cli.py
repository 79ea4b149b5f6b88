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
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from watchdog.clock import utcnow
from watchdog.core.durations import format_duration, parse_duration, parse_time
from watchdog.core.events import Kind
from watchdog.views.text import (
    EVENT_HEADER,
    batch_json,
    batch_table,
    budget_table,
    column_widths,
    event_cells,
    event_json,
    printable,
    replay_table,
    report_table,
    show_config,
    table,
    table_line,
)

if TYPE_CHECKING:
    from watchdog.settings import Settings

# Settings, logging and watchdog.app (with the database, HTTP and scheduler libraries)
# are imported by the commands that use them: `--help` and argument errors answer at once.

EX_OK, EX_ERROR, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
EVENT_KINDS = [str(kind) for kind in Kind]
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
    for add in COMMANDS:
        add(sub, common)
    return parser


def _add_run(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    run = sub.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--once", action="store_true", help="one full tick, then exit")
    run.add_argument("--dry-run", action="store_true", help="judge and record, never cancel")


def _add_migrate(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    sub.add_parser("migrate", parents=[common], help="bring the database schema to head")


def _add_track(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    track = sub.add_parser("track", parents=[common], help="start tracking a batch")
    track.add_argument("batch_id", metavar="ID")
    track.add_argument("--provider", required=True, metavar="NAME")
    track.add_argument("--label", action="append", default=[], metavar="K=V")


def _add_untrack(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    untrack = sub.add_parser("untrack", parents=[common], help="stop tracking (history kept)")
    untrack.add_argument("batch_id", metavar="ID")
    untrack.add_argument("--provider", metavar="NAME")


def _add_list(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    lister = sub.add_parser("list", parents=[common], help="tracked batches")
    lister.add_argument("--status", metavar="S")
    lister.add_argument("--json", action="store_true")


def _add_events(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    events = sub.add_parser("events", parents=[common], help="the audit log, streamed")
    events.add_argument("batch_id", nargs="?", metavar="ID")
    events.add_argument("--provider", metavar="NAME")
    events.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=EVENT_KINDS,
        metavar="KIND",
        help="repeatable",
    )
    events.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--until", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--limit", type=_positive, metavar="N", help="the newest N")
    events.add_argument("--json", action="store_true", help="a JSON array, written as it comes")


def _add_exempt(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    exempt = sub.add_parser("exempt", parents=[common], help="never cancel a batch for a while")
    exempt.add_argument("batch_id", metavar="ID")
    exempt.add_argument("--provider", metavar="NAME")
    exempt.add_argument(
        "--for", dest="duration", required=True, metavar="DURATION", type=_duration, help="e.g. 2h"
    )
    exempt.add_argument("--reason", required=True, metavar="TEXT")


def _add_unexempt(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    unexempt = sub.add_parser("unexempt", parents=[common], help="lift a silence")
    unexempt.add_argument("batch_id", metavar="ID")
    unexempt.add_argument("--provider", metavar="NAME")


def _add_report(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    report = sub.add_parser("report", parents=[common], help="spend and savings per group and day")
    report.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    groups = "provider, model, policy or metadata.KEY"
    report.add_argument("--by", type=_by, default="provider", metavar="GROUP", help=groups)
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")


def _add_replay(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    replay = sub.add_parser(
        "replay", parents=[common], help="judge recorded history again with this config"
    )
    replay.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    replay.add_argument("--json", action="store_true")


def _add_explain(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    explain = sub.add_parser("explain", parents=[common], help="what the next tick will do")
    explain.add_argument("batch_id", metavar="ID")
    explain.add_argument("--provider", metavar="NAME")
    explain.add_argument("--json", action="store_true")


def _add_budgets(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    budgets = sub.add_parser("budgets", parents=[common], help="spend against each budget")
    budgets.add_argument("--json", action="store_true")


def _add_resume(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    sub.add_parser("resume", parents=[common], help="end a safety trip (alert-only mode)")


def _add_check_config(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    sub.add_parser("check-config", parents=[common], help="validate and show the config")


def _add_test_policies(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    tests = sub.add_parser("test-policies", help="check policies against scripted timelines")
    tests.add_argument("files", nargs="+", metavar="FILE", help="YAML policy tests")


def _add_simulate(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    sim = sub.add_parser("simulate", parents=[common], help="serve the simulated batch API")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089)
    sim.add_argument("--scenario", choices=["empty", "demo"], default="demo")
    sim.add_argument("--api", type=_api, default="openai", metavar="KIND", help="dialect to serve")


def _add_demo(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    demo = sub.add_parser("demo", parents=[common], help="simulator + daemon, end to end")
    demo.add_argument("--duration", type=float, default=45.0, metavar="SECONDS")


COMMANDS: list[Callable[[argparse._SubParsersAction[Parser], Parser], None]] = [
    _add_run,
    _add_migrate,
    _add_track,
    _add_untrack,
    _add_list,
    _add_events,
    _add_exempt,
    _add_unexempt,
    _add_report,
    _add_replay,
    _add_explain,
    _add_budgets,
    _add_resume,
    _add_check_config,
    _add_test_policies,
    _add_simulate,
    _add_demo,
]  # in the order --help lists them


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
            widths = column_widths(head, EVENT_HEADER)
            out.write(table_line(EVENT_HEADER, widths) + "\n")
            out.writelines(table_line(r, widths) + "\n" for r in head)
            first = False
        out.write(table_line(event_cells(row), widths) + "\n")
    if first:
        print(table(head, EVENT_HEADER) if head else "no events")


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
    from watchdog.providers.dialects import DIALECTS

    if text not in DIALECTS:
        raise argparse.ArgumentTypeError(f"unknown api {text!r}; valid: {', '.join(DIALECTS)}")
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
    path = str(config_path(args.config, os.environ))
    print(show_config(settings, path, app.redact_url(settings.database_url)))
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
