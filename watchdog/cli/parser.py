"""The command line's grammar: every command and its arguments, the exit codes, and
the argument types that turn text into values (a usage error exits 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NoReturn

from watchdog.clock import utcnow
from watchdog.core.durations import moment, parse_duration
from watchdog.core.events import Kind

if TYPE_CHECKING:
    pass

# Settings, logging and watchdog.app (with the database, HTTP and scheduler libraries)
# are imported by the commands that use them: `--help` and argument errors answer at once.


EX_OK, EX_ERROR, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


EVENT_KINDS = [str(kind) for kind in Kind]


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
    groups = "provider, model, policy, metadata.KEY or labels.KEY"
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
        return moment(text, utcnow())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
