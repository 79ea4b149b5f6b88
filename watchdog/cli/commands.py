"""What each command does: loads the config, calls into the app, prints (the views
do the text). Heavy libraries load with the commands that use them."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdog.clock import utcnow
from watchdog.core.durations import format_duration, iso
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
    from watchdog.views.report import Report

# Settings, logging and watchdog.app (with the database, HTTP and scheduler libraries)
# are imported by the commands that use them: `--help` and argument errors answer at once.
from watchdog.cli.parser import EX_ERROR, EX_OK

HEAD_ROWS = 200  # a streamed table's columns are as wide as its first rows need


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


def test_policies(files: list[str], config: str | None = None) -> int:
    """Each file's failing expectations (judged with ``config`` when given, else the
    config each file names); 1 if any failed, 0 when all hold."""
    from watchdog.views import policytests

    failed = 0
    for name in files:
        test, settings = policytests.load(Path(name), Path(config) if config else None)
        failures = policytests.run(test, settings)
        failed += len(failures)
        for line in failures:
            print(f"FAIL {name}: {printable(line)}")
        held = len(test.expect) - len(failures)
        print(f"{'ok  ' if not failures else 'FAIL'} {name}: {held}/{len(test.expect)} hold")
    return 1 if failed else EX_OK


def schema() -> int:
    """The config's JSON Schema, as config/watchdog.schema.json holds it."""
    from watchdog.views.configschema import json_schema

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return EX_OK


def completion(shell: str) -> int:
    """A completion script for ``shell`` (argcomplete's: it asks the program itself)."""
    from argcomplete.shell_integration import shellcode

    print(shellcode(["batch-watchdog"], shell=shell))
    return EX_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.settings import config_path

    path = config_path(args.config, os.environ)
    asyncio.run(
        app.run(settings, once=args.once, dry_run=args.dry_run, config=path, redact=args.redact)
    )
    return EX_OK


def exit_when_threads_linger(code: int) -> None:
    """After a clean shutdown (every write committed, the database closed), a thread
    still running — a database connection some cancelled task never gave back, whose
    worker thread the interpreter would wait for at exit — must not keep the daemon
    from exiting: it is named in a warning, and the process ends here."""
    import threading

    lingering = [
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]  # fmt: skip
    if not lingering:
        return
    import structlog

    structlog.get_logger("watchdog.cli").warning(
        "shutdown_threads_left", threads=lingering, note="exiting anyway: every write is committed"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def _spend_report(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    since = args.since or utcnow() - timedelta(days=7)
    found = asyncio.run(app.report(settings, since, args.by))
    if args.json:
        print(dump(found.as_dict()))
    elif args.csv:
        write_csv(found)
    else:
        print(report_table(found))
    return EX_OK


def write_csv(found: Report) -> None:
    import csv

    fields = list(found.totals().as_dict())  # every column of --json, in its order
    out = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    out.writeheader()
    out.writerows([line.as_dict() for line in [*found.rows(), found.totals()]])


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
        sys.stdout.write(json.dumps({"since": iso(since)})[:-1] + ', "batches": [\n')
    asyncio.run(judged())
    report = {"since": iso(since), "batches": changed, "totals": tally.as_dict(),
              "limits": app.REPLAY_LIMITS}  # fmt: skip
    if args.json:
        tail = {"totals": report["totals"], "limits": report["limits"]}
        print("\n], " + json.dumps(tail)[1:])
    else:
        print(replay_table(report))
    return EX_OK


def _explain(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.views.explain import explanation_text

    now = utcnow()
    found = asyncio.run(app.explain(settings, args.batch_id, args.provider, now))
    text = "\n".join(map(printable, explanation_text(found).split("\n")))
    print(dump(found.as_dict()) if args.json else text)
    return EX_OK


def _budgets(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app

    found = [a.figures() for a in asyncio.run(app.budgets(settings, utcnow()))]
    print(dump([f.as_dict() for f in found]) if args.json else budget_table(found))
    return EX_OK


def _check_config(settings: Settings, args: argparse.Namespace) -> int:
    from watchdog import app
    from watchdog.settings import config_path

    app.check_keys(settings)  # what `run` checks, so that OK here means `run` starts
    path = str(config_path(args.config, os.environ))
    print(show_config(settings, path, app.redact_url(settings.database_url)))
    return EX_OK


def _healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    """``/healthz`` at the host and port the config names (a container's HEALTHCHECK):
    0 when it answers 200, 1 with one line saying why not."""
    import urllib.error
    import urllib.request

    http = settings.http
    if not http.enabled:
        print("http.enabled is false: no /healthz to ask")
        return EX_OK
    if http.port == 0:
        print("error: http.port is 0 (any free port): no known port to ask", file=sys.stderr)
        return EX_ERROR
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{http.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"error: {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return EX_ERROR
    if status != 200:
        print(f"error: {url} answered {status}", file=sys.stderr)
        return EX_ERROR
    print(f"ok: {url}")
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
    "healthcheck": _healthcheck,
}
