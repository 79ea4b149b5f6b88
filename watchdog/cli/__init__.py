"""Command line: parses arguments, runs the command, prints. Exit codes: 0 ok, 2 usage,
78 config error, 1 anything else; errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from watchdog.cli.commands import (
    HANDLERS,
    completion,
    exit_when_threads_linger,
    load,
    schema,
    test_policies,
)
from watchdog.cli.parser import EX_CONFIG, EX_ERROR, EX_OK, EX_USAGE, build_parser
from watchdog.views.text import batch_table


def console() -> int:
    """The console script and ``python -m watchdog``: ``main``, then an exit that no
    lingering thread can hold up (a process of its own: never called in-process)."""
    code = main()
    exit_when_threads_linger(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (and exits)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
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
        return test_policies(args.files, args.config)
    if args.command == "schema":
        return schema()
    if args.command == "completion":
        return completion(args.shell)
    settings = load(args)
    handler = HANDLERS[args.command]
    return handler(settings, args)
