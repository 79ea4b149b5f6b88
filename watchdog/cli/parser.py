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

# Settings, logging and watchdog.app (with the database, HTTP and scheduler libraries)
# are imported by the commands that use them: `--help` and argument errors answer at once.


EX_OK, EX_ERROR, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


EVENT_KINDS = [str(kind) for kind in Kind]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("batch-watchdog")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


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
        epilog="exit codes: 0 ok, 1 error, 2 usage, 78 config error. "
        "`batch-watchdog COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"batch-watchdog {version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND"
    )
    for add in COMMANDS:
        add(sub, common)
    return parser


if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[Parser]


def _command(sub: Sub, name: str, common: Parser | None, summary: str, *examples: str) -> Parser:
    """A command with its one-line summary and examples (shown by its --help)."""
    return sub.add_parser(
        name,
        parents=[common] if common is not None else [],
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  batch-watchdog {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _json(parser: Parser, what: str = "the same, as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=what)


def _batch(parser: Parser, *, provider_required: bool = False) -> None:
    """The batch a command is about: its id, and the provider where it is ambiguous."""
    parser.add_argument("batch_id", metavar="ID", help="the provider's batch id")
    _provider(parser, provider_required)


def _provider(parser: Parser, required: bool = False) -> None:
    said = "the provider's name in the config" + ("" if required else " (when the id is ambiguous)")
    parser.add_argument("--provider", required=required, metavar="NAME", help=said)


def _add_run(sub: Sub, common: Parser) -> None:
    run = _command(sub, "run", common, "run the daemon", "run", "run --once --dry-run",
                   "run --config /etc/batch-watchdog/watchdog.yaml")  # fmt: skip
    run.add_argument("--once", action="store_true", help="one full tick, then exit")
    run.add_argument("--dry-run", action="store_true", help="judge and record, never cancel")


def _add_migrate(sub: Sub, common: Parser) -> None:
    _command(sub, "migrate", common, "bring the database schema to head", "migrate")


def _add_track(sub: Sub, common: Parser) -> None:
    track = _command(sub, "track", common, "start tracking a batch",
                     "track batch_abc123 --provider deepinfra",
                     "track batch_abc123 --provider openai --label team=research")  # fmt: skip
    _batch(track, provider_required=True)
    track.add_argument("--label", action="append", default=[], metavar="K=V",
                       help="a label of ours for matching and grouping (repeatable)")  # fmt: skip


def _add_untrack(sub: Sub, common: Parser) -> None:
    untrack = _command(sub, "untrack", common, "stop tracking a batch (its history is kept)",
                       "untrack batch_abc123",
                       "untrack batch_abc123 --provider openai")  # fmt: skip
    _batch(untrack)


def _add_list(sub: Sub, common: Parser) -> None:
    lister = _command(sub, "list", common, "list the tracked batches", "list",
                      "list --status in_progress --json")  # fmt: skip
    lister.add_argument("--status", metavar="S", help="only batches in this status")
    _json(lister, "a JSON array of objects (id, provider, status, model, cost_usd, …)")


def _add_events(sub: Sub, common: Parser) -> None:
    events = _command(sub, "events", common, "the audit log, streamed", "events batch_abc123",
                      "events --kind cancel_succeeded --since 1d --json",
                      "events --limit 50")  # fmt: skip
    events.add_argument("batch_id", nargs="?", metavar="ID", help="only this batch's events")
    _provider(events)
    events.add_argument("--kind", action="append", default=[], choices=EVENT_KINDS,
                        metavar="KIND", help="only events of this kind (repeatable)")  # fmt: skip
    events.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--until", type=_when, metavar="WHEN", help="7d (ago) or an ISO time")
    events.add_argument("--limit", type=_positive, metavar="N", help="the newest N")
    _json(events, "a JSON array, written as it comes")


def _add_exempt(sub: Sub, common: Parser) -> None:
    exempt = _command(sub, "exempt", common, "never cancel a batch for a while",
                      "exempt batch_abc123 --for 2h --reason 'customer demo'")  # fmt: skip
    _batch(exempt)
    exempt.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                        type=_duration, help="how long: 90s, 15m, 2h, 1d")  # fmt: skip
    exempt.add_argument("--reason", required=True, metavar="TEXT",
                        help="why (recorded in the audit log)")  # fmt: skip


def _add_unexempt(sub: Sub, common: Parser) -> None:
    unexempt = _command(sub, "unexempt", common, "lift a batch's exemption",
                        "unexempt batch_abc123")  # fmt: skip
    _batch(unexempt)


def _add_report(sub: Sub, common: Parser) -> None:
    report = _command(sub, "report", common, "spend and savings per group and day", "report",
                      "report --since 30d --by metadata.team --csv")  # fmt: skip
    report.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    groups = "provider (default), model, policy, metadata.KEY or labels.KEY"
    report.add_argument("--by", type=_by, default="provider", metavar="GROUP", help=groups)
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the rows and totals as JSON")
    shape.add_argument("--csv", action="store_true", help="the rows and totals as CSV")


def _add_replay(sub: Sub, common: Parser) -> None:
    replay = _command(sub, "replay", common, "judge the recorded history again with a config",
                      "replay --config new.yaml",
                      "replay --config new.yaml --since 3d --json")  # fmt: skip
    replay.add_argument("--since", type=_when, metavar="WHEN", help="7d (ago, default) or a time")
    _json(replay, "one JSON object per batch, as it is judged")


def _add_explain(sub: Sub, common: Parser) -> None:
    explain = _command(sub, "explain", common, "show what the next tick will do with a batch",
                       "explain batch_abc123",
                       "explain batch_abc123 --provider openai --json")  # fmt: skip
    _batch(explain)
    _json(explain)


def _add_budgets(sub: Sub, common: Parser) -> None:
    budgets = _command(sub, "budgets", common, "show spend against each budget", "budgets",
                       "budgets --json")  # fmt: skip
    _json(budgets)


def _add_resume(sub: Sub, common: Parser) -> None:
    _command(sub, "resume", common, "end a safety trip (alert-only mode)", "resume")


def _add_check_config(sub: Sub, common: Parser) -> None:
    _command(sub, "check-config", common, "validate the config and show it as understood",
             "check-config", "check-config --config config/watchdog.yaml")  # fmt: skip


def _add_healthcheck(sub: Sub, common: Parser) -> None:
    _command(sub, "healthcheck", common, "ask the running daemon's /healthz (exit 0 or 1)",
             "healthcheck", "healthcheck --config /etc/batch-watchdog/watchdog.yaml")  # fmt: skip


def _add_schema(sub: Sub, common: Parser) -> None:
    _command(sub, "schema", None, "print the config's JSON Schema (for editors)",
             "schema > config/watchdog.schema.json")  # fmt: skip


def _add_test_policies(sub: Sub, common: Parser) -> None:
    tests = _command(sub, "test-policies", None, "check policies against scripted timelines",
                     "test-policies config/policies.test.yaml",
                     "test-policies --config config/watchdog.yaml "
                     "config/policies.test.yaml")  # fmt: skip
    tests.add_argument("files", nargs="+", metavar="FILE", help="YAML policy tests")
    tests.add_argument("--config", metavar="PATH",
                       help="judge with this config, not the one each file names")  # fmt: skip


def _add_completion(sub: Sub, common: Parser) -> None:
    done = _command(sub, "completion", None, "print a shell completion script",
                    "completion bash > ~/.local/share/bash-completion/completions/batch-watchdog",
                    "completion zsh > ~/.zfunc/_batch-watchdog",
                    "completion fish > ~/.config/fish/completions/batch-watchdog.fish")  # fmt: skip
    done.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete in")


def _add_simulate(sub: Sub, common: Parser) -> None:
    sim = _command(sub, "simulate", common, "serve the simulated batch API", "simulate",
                   "simulate --api mistral --port 8090 --scenario empty")  # fmt: skip
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sim.add_argument("--port", type=int, default=8089, help="port to listen on (8089)")
    sim.add_argument("--scenario", choices=["empty", "demo"], default="demo",
                     help="the batches it starts with (demo)")  # fmt: skip
    sim.add_argument("--api", type=_api, default="openai", metavar="KIND",
                     help="the dialect to serve: openai (default), azure, groq, mistral, "
                     "together, anthropic")  # fmt: skip


def _add_demo(sub: Sub, common: Parser) -> None:
    demo = _command(sub, "demo", common, "run the simulator and the daemon end to end", "demo",
                    "demo --duration 20")  # fmt: skip
    demo.add_argument("--duration", type=float, default=45.0, metavar="SECONDS",
                      help="stop after this long at the most (45)")  # fmt: skip


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
    _add_healthcheck,
    _add_schema,
    _add_test_policies,
    _add_simulate,
    _add_demo,
    _add_completion,
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
