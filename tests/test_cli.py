"""The command line as users run it, against a simulator on a real port and a real
database: exit codes, one-line errors, and the key in no output at all. Commands run
in-process (main() with its own environment, stdout and stderr) unless a real process
proves something more: exit statuses as the shell sees them, signals, the lock."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, SQLITE_ONLY, Sim
from tests.daemons import Daemon
from tests.databases import dump, has_schema
from watchdog import cli as cli_module
from watchdog.daemon import logs
from watchdog.sim.simulator import Fault

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    """Runs ``python -m watchdog`` with a config file and collects every output."""

    def __init__(self, tmp_path: Path, sim: Sim, db_url: str) -> None:
        self.tmp = tmp_path
        self.sim = sim
        self.db_url = db_url
        self.config = tmp_path / "watchdog.yaml"
        self.outputs: list[str] = []
        self.write_config()

    def write_config(self, extra: str = "", provider: str = "") -> None:
        """The test config; ``extra`` adds top-level keys, ``provider`` keys of sim's."""
        self.config.write_text(f"""
database_url: {self.db_url}
poll_interval: 60s
http: {{port: 0}}
providers:
  sim:
    base_url: {self.sim.url}
    api_key_env: SIM_TOKEN
{provider}pricing:
  - {{model: "meta-llama/*", input: 0.03, output: 0.05}}
policies:
  - name: cost-cap
    match: {{model: "meta-llama/*"}}
    when: {{cost_usd_above: 5}}
    action: cancel
{extra}""")

    async def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        config: bool = True,
        process: bool = False,
    ) -> Result:
        base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        full_env = base | {"SIM_TOKEN": API_KEY} | (env or {})
        argv = [*args, "--config", str(self.config)] if config else list(args)
        if process:
            result = await self._process(argv, full_env)
        else:  # main() runs its own event loop: off this one's thread
            result = await asyncio.to_thread(self._in_process, argv, full_env)
        self.outputs += [result.out, result.err]
        return result

    def _in_process(self, argv: list[str], env: dict[str, str]) -> Result:
        """``main(argv)`` as the process would run it: its environment, working
        directory, stdout and stderr; its logging setup undone after."""
        out, err, saved, cwd = io.StringIO(), io.StringIO(), dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(env)
        os.chdir(self.tmp)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli_module.main(argv)
                except SystemExit as exc:  # argparse: usage errors and --help
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)
            logs.reset()
        return Result(code, out.getvalue(), err.getvalue())

    async def _process(self, argv: list[str], env: dict[str, str]) -> Result:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watchdog",
            *argv,
            env=env,
            cwd=self.tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return Result(proc.returncode or 0, out.decode(), err.decode())

    def add_expensive(self, batch_id: str) -> None:
        batch = self.sim.simulator.add(
            batch_id,
            model=LLAMA,
            total=2000,
            rate=1.0,
            age=1000,
            input_tokens=50_000,
            output_tokens=100_000,
        )
        batch.rate = 1000 / (self.sim.simulator.clock() - batch.run_start)


@pytest.fixture
async def cli(tmp_path: Path, sim: Sim, db_url: str) -> Cli:
    """The CLI on SQLite and on PostgreSQL (which, unlike SQLite, is migrated explicitly)."""
    runner = Cli(tmp_path, sim, db_url)
    if not db_url.startswith("sqlite"):
        assert (await runner("migrate")).code == 0
    return runner


@SQLITE_ONLY
async def test_check_config_prints_the_policies(cli: Cli) -> None:
    """check-config exits 0 and shows what it understood."""
    result = await cli("check-config")
    assert result.code == 0, result.err
    assert "cost-cap: cancel when model=meta-llama/*, cost_usd_above=5" in result.out
    assert "sim: " in result.out and "key from $SIM_TOKEN" in result.out


@SQLITE_ONLY
@pytest.mark.parametrize("command", [["check-config"], ["run", "--once"], ["list"]])
async def test_bad_config_exits_78_with_one_line(cli: Cli, command: list[str]) -> None:
    """A config error never starts anything: exit 78, one line naming file, policy, field."""
    cli.write_config("  - {name: broken, when: {cost_usd_abov: 1}, action: cancel}\n")
    result = await cli(*command, process=command[0] == "run")
    assert result.code == 78
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert f"{cli.config}: policy 'broken': when.cost_usd_abov: unknown key" in result.err
    assert await untouched(cli)


@SQLITE_ONLY
@pytest.mark.parametrize("command", [["run", "--once"], ["check-config"]])
async def test_missing_key_variable_is_a_config_error(cli: Cli, command: list[str]) -> None:
    """run without the provider's key variable exits 78 naming the variable, and
    check-config checks the same, so that its OK means run starts."""
    result = await cli(*command, env={"SIM_TOKEN": ""})
    assert result.code == 78 and "environment variable SIM_TOKEN is not set" in result.err
    assert result.out == ""


async def test_check_config_hides_the_database_password_and_the_keys(
    tmp_path: Path, sim: Sim
) -> None:
    """The database URL is shown with its password masked, overrides with their source;
    the key is read (checked) but never shown."""
    cli = Cli(tmp_path, sim, "postgresql+psycopg://watchdog:hunter2@127.0.0.1:1/watchdog")
    result = await cli("check-config", env={"WATCHDOG_DRY_RUN": "true"})
    assert result.code == 0, result.err
    assert "database: postgresql+psycopg://watchdog:***@127.0.0.1:1/watchdog" in result.out
    assert "dry_run: from environment variable WATCHDOG_DRY_RUN" in result.out
    assert "hunter2" not in result.out + result.err and API_KEY not in result.out


async def test_unknown_watchdog_variable_never_starts_anything(tmp_path: Path, sim: Sim) -> None:
    """A typo such as WATCHDOG_DRYRUN=true exits 78 with one line; nothing is created."""
    cli = Cli(tmp_path, sim, f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    result = await cli("run", "--once", env={"WATCHDOG_DRYRUN": "true"}, process=True)
    assert result.code == 78 and result.err.count("\n") == 1
    assert "environment variable WATCHDOG_DRYRUN: no such setting" in result.err
    assert not (tmp_path / "w.db").exists()


@SQLITE_ONLY
@pytest.mark.parametrize("batch_id", ["../files/x", "a b", "", ".", ".."])
async def test_track_refuses_bad_ids(cli: Cli, batch_id: str) -> None:
    """A bad id exits 2 with one line; nothing is stored and nothing is sent."""
    result = await cli("track", batch_id, "--provider", "sim")
    assert result.code == 2 and "invalid batch id" in result.err
    assert result.err.count("\n") == 1
    assert cli.sim.simulator.calls == {}
    assert await untouched(cli)


@SQLITE_ONLY
async def test_track_refuses_unknown_provider(cli: Cli) -> None:
    """An unknown provider exits 2 and lists the known ones."""
    result = await cli("track", "batch_1", "--provider", "openai")
    assert result.code == 2
    assert "unknown provider 'openai'; known: sim" in result.err


@SQLITE_ONLY
async def test_usage_errors_exit_2(cli: Cli) -> None:
    """argparse mistakes exit 2."""
    assert (await cli("frobnicate", config=False, process=True)).code == 2
    assert (await cli("track", "x")).code == 2  # --provider missing


async def test_track_run_list_events_end_to_end(cli: Cli) -> None:
    """track → run --once cancels the expensive batch → run again cancels nothing more;
    list and events give the documented JSON; the key appears in no output."""
    cli.add_expensive("batch_big")
    cli.sim.simulator.add("batch_small", model=LLAMA, total=100, rate=0)
    for batch_id in ("batch_big", "batch_small"):
        result = await cli("track", batch_id, "--provider", "sim", "--label", "team=ml")
        assert result.code == 0 and f"tracking sim/{batch_id}" in result.out
    assert (await cli("track", "batch_big", "--provider", "sim")).out.startswith("already")
    assert (await cli("run", "--once")).code == 0
    assert (await cli("run", "--once")).code == 0
    assert cli.sim.calls("batch_big", "cancel") == 1
    assert cli.sim.calls("batch_small", "cancel") == 0

    listed = json.loads((await cli("list", "--json")).out)
    big = next(b for b in listed if b["id"] == "batch_big")
    assert {
        "id",
        "provider",
        "status",
        "model",
        "cost_usd",
        "request_counts",
        "expires_at",
        "cancel_policy",
    } <= big.keys()
    assert big["cancel_policy"] == "cost-cap" and big["cost_usd"] == 6.5
    assert big["request_counts"] == {"total": 2000, "completed": 1000, "failed": 0}
    assert big["labels"] == {"team": "ml"}
    filtered = json.loads((await cli("list", "--status", "cancelling", "--json")).out)
    assert [b["id"] for b in filtered] == ["batch_big"]

    events = json.loads((await cli("events", "batch_big", "--json")).out)
    assert all(
        set(e)
        == {"at", "batch_id", "provider", "kind", "from_status", "to_status", "policy", "detail"}
        for e in events
    )
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["tracked", "status_changed"]
    assert {"policy_matched", "cancel_requested", "cancel_succeeded"} <= set(kinds)
    assert events[kinds.index("policy_matched")]["policy"] == "cost-cap"
    table = (await cli("list")).out
    assert "batch_big" in table and "cost-cap" in table and "$6.5000" in table
    assert "cancel_succeeded" in (await cli("events")).out
    await assert_no_key(cli)


@SQLITE_ONLY
async def test_transient_failures_still_cancel_in_one_run(cli: Cli) -> None:
    """One 503 and one 429 (Retry-After: 1) on polls: both batches are judged and cancelled."""
    for name in ("batch_503", "batch_429"):
        cli.add_expensive(name)
        await cli("track", name, "--provider", "sim")
    cli.sim.simulator.faults += [
        Fault("GET", "/batches/batch_503", 503),
        Fault("GET", "/batches/batch_429", 429, headers={"Retry-After": "1"}),
    ]
    assert (await cli("run", "--once")).code == 0
    assert cli.sim.calls("batch_503", "cancel") == 1
    assert cli.sim.calls("batch_429", "cancel") == 1


@SQLITE_ONLY
async def test_dry_run_flag_sends_no_cancel(cli: Cli) -> None:
    """run --once --dry-run records policy_matched and sends nothing."""
    cli.add_expensive("batch_big")
    await cli("track", "batch_big", "--provider", "sim")
    result = await cli("run", "--once", "--dry-run")
    assert result.code == 0 and "dry_run_enabled" in result.err
    assert cli.sim.calls("batch_big", "cancel") == 0
    kinds = [e["kind"] for e in json.loads((await cli("events", "--json")).out)]
    assert "policy_matched" in kinds and "cancel_requested" not in kinds


@SQLITE_ONLY
async def test_key_echoed_by_a_provider_is_masked_everywhere(cli: Cli) -> None:
    """Even a provider that echoes the key back leaves no trace of it."""
    cli.sim.simulator.faults.append(
        Fault(
            "GET",
            "/batches/batch_1",
            400,
            times=5,
            body=f'{{"error": {{"message": "bad key {API_KEY}"}}}}',
        )
    )
    await cli("track", "batch_1", "--provider", "sim")
    assert (await cli("run", "--once")).code == 0
    events = (await cli("events", "--json")).out
    assert "[redacted]" in events
    await assert_no_key(cli)


async def test_untrack(cli: Cli) -> None:
    """untrack removes the batch and keeps its history; an unknown id exits 1."""
    await cli("track", "batch_1", "--provider", "sim")
    result = await cli("untrack", "batch_1")
    assert result.code == 0 and "stopped tracking sim/batch_1" in result.out
    assert json.loads((await cli("list", "--json")).out) == []
    kinds = [e["kind"] for e in json.loads((await cli("events", "batch_1", "--json")).out)]
    assert kinds == ["tracked", "untracked"]
    assert (await cli("untrack", "batch_1")).code == 1


async def test_daemon_ticks_until_sigterm_then_exits_0(cli: Cli) -> None:
    """run (no --once) ticks on its interval, and SIGTERM ends it cleanly with exit 0."""
    import signal

    cli.config.write_text(cli.config.read_text().replace("poll_interval: 60s", "poll_interval: 1s"))
    cli.add_expensive("batch_big")
    await cli("track", "batch_big", "--provider", "sim")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watchdog",
        "run",
        "--config",
        str(cli.config),
        cwd=cli.tmp,
        env=env | {"SIM_TOKEN": API_KEY},
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    ticks = 0
    lines: list[bytes] = []
    # Until it has ticked twice and polled the batch again (after the cancel, on the
    # cancel's follow-up schedule): counted, not timed.
    while ticks < 2 or cli.sim.calls("batch_big", "get") < 2:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
        assert line, b"".join(lines).decode()
        lines.append(line)
        ticks += b'"tick_completed"' in line
    proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.stderr.read(), timeout=60)
    assert await proc.wait() == 0
    assert b"daemon_stopped" in rest
    assert cli.sim.calls("batch_big", "cancel") == 1
    assert cli.sim.calls("batch_big", "get") >= 2
    cli.outputs.append((b"".join(lines) + rest).decode())
    await assert_no_key(cli)


async def test_second_daemon_on_one_sqlite_file_is_refused(tmp_path: Path, sim: Sim) -> None:
    """SQLite supports one daemon per file: a second one exits 1 with a clear line.
    (Several on PostgreSQL: tests/test_scaleout.py.)"""
    cli = Cli(tmp_path, sim, f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}")
    first = await Daemon.start(cli.config)
    try:
        await first.wait_for(lambda: len(first.ticks()) >= 1)
        second = await cli("run", "--once", process=True)
        assert second.code == 1
        assert "another batch-watchdog is running on" in second.err
        assert "use PostgreSQL to run several" in second.err
        assert second.err.count("\n") == 1
    finally:
        assert await first.stop() == 0
    assert (await cli("run", "--once")).code == 0  # the lock went with the first daemon


async def test_exempt_unexempt_resume(cli: Cli) -> None:
    """exempt holds a batch's cancel (shown in list and events); unexempt lifts it;
    resume says whether a safety trip was in force."""
    cli.add_expensive("batch_big")
    await cli("track", "batch_big", "--provider", "sim")
    result = await cli("exempt", "batch_big", "--for", "2h", "--reason", "customer demo")
    assert result.code == 0 and "sim/batch_big: exempt for 2h" in result.out
    assert (await cli("run", "--once")).code == 0
    assert cli.sim.calls("batch_big", "cancel") == 0
    listed = json.loads((await cli("list", "--json")).out)[0]
    assert listed["exempt_reason"] == "customer demo" and listed["exempt_until"]
    assert (await cli("unexempt", "batch_big")).code == 0
    assert (await cli("run", "--once")).code == 0
    assert cli.sim.calls("batch_big", "cancel") == 1
    kinds = [e["kind"] for e in json.loads((await cli("events", "--json")).out)]
    assert kinds.index("exempted") < kinds.index("unexempted") < kinds.index("cancel_requested")
    assert (await cli("exempt", "nope", "--for", "1h", "--reason", "x")).code == 1
    assert (await cli("exempt", "batch_big", "--for", "soon", "--reason", "x")).code == 2
    assert (await cli("resume")).out.strip() == "no safety trip in force"


async def test_migrate(cli: Cli) -> None:
    """migrate brings a new database to head and says so."""
    result = await cli("migrate")
    from tests.test_store import HEAD

    assert result.code == 0 and f"database schema at {HEAD} (head {HEAD})" in result.out


async def test_console_script_is_installed() -> None:
    """The batch-watchdog console script runs (the same main as python -m watchdog)."""
    script = Path(sys.executable).parent / "batch-watchdog"
    proc = await asyncio.create_subprocess_exec(
        str(script), "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"check-config" in out


async def test_demo_runs_and_cancels(tmp_path: Path) -> None:
    """The demo serves its simulator, runs the daemon, discovers, crosses a budget and
    cancels within seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watchdog",
        "demo",
        "--duration",
        "6",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    assert "batch_late_backfill" in text and "expiring-slow" in text
    assert "batch_flaky_extraction" in text and "failing" in text
    assert b"cancel_succeeded" in err
    assert "batch_exempt_vip" in text
    # Cancelled while validating, on its input file's estimate: nothing spent.
    assert "batch_oversized_translation" in text and "estimate-cap" in text
    assert b'"estimated_cost_usd_above": 6.1875' in err
    # A batch nobody tracked, found by discovery; the research budget crossed.
    assert "batch_notebook_sweep" in text and b'"via": "discovery"' in err
    assert b'"event": "budget_exceeded"' in err and b'"event": "budget_threshold"' in err


async def untouched(cli: Cli) -> bool:
    """Nothing was written: no SQLite file at all, or (PostgreSQL) empty tables."""
    if cli.db_url.startswith("sqlite"):
        return not await has_schema(cli.db_url)
    return await dump(cli.db_url) == b"[]"


async def assert_no_key(cli: Cli) -> None:
    """The API key is in no output of any command, and nowhere in the database."""
    for text in cli.outputs:
        assert API_KEY not in text
    content = await dump(cli.db_url)
    assert content and API_KEY.encode() not in content


def test_absurd_exempt_duration_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`exempt --for 99999999999999999999d` is refused in one line (exit 2), no traceback."""
    from watchdog.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["exempt", "batch_1", "--for", "99999999999999999999d", "--reason", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "at most 3650d" in err and "Traceback" not in err


def test_list_shows_control_characters_escaped() -> None:
    """A provider's escape sequence in a status or model never reaches the terminal raw."""
    from watchdog.core.models import BatchView
    from watchdog.core.rows import Listed, Tracked
    from watchdog.views.text import batch_table

    view = BatchView("p", "b1", "\x1b[2J\x1b]0;pwn\x07", "m\r")
    nothing = dict.fromkeys(
        ("cost_usd", "matched_policy", "last_error", "cancel_policy", "cancel_requested_at",
         "cancel_outcome", "pricing_missing_at", "tracked_at", "exempt_until", "exempt_reason")
    )  # fmt: skip
    row = Listed(Tracked(view, poll_failures=0, cancel_attempts=0, **nothing), None, None, None)
    out = batch_table([row])
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b[2J" in out


@SQLITE_ONLY
async def test_events_filters_and_streams(cli: Cli) -> None:
    """events takes --provider, --kind (repeatable, checked), --since/--until (a duration
    ago or an ISO time) and --limit (the newest N); --json is one JSON array."""
    for batch_id in ("b1", "b2", "b3"):
        assert (await cli("track", batch_id, "--provider", "sim")).code == 0
    assert (await cli("untrack", "b2")).code == 0

    async def kinds(*args: str) -> list[tuple[str, str]]:
        result = await cli("events", "--json", *args)
        assert result.code == 0, result.err
        return [(e["batch_id"], e["kind"]) for e in json.loads(result.out)]

    assert await kinds() == [
        ("b1", "tracked"),
        ("b2", "tracked"),
        ("b3", "tracked"),
        ("b2", "untracked"),
    ]
    assert await kinds("--kind", "untracked") == [("b2", "untracked")]
    assert await kinds("b2") == [("b2", "tracked"), ("b2", "untracked")]
    assert await kinds("--limit", "2") == [("b3", "tracked"), ("b2", "untracked")]
    assert await kinds(
        "--since", "1h", "--kind", "tracked", "--kind", "untracked", "--limit", "1"
    ) == [("b2", "untracked")]
    assert await kinds("--until", "2020-01-01") == []
    assert await kinds("--since", "2999-01-01T00:00:00Z") == []
    table = (await cli("events", "--provider", "sim")).out
    assert table.splitlines()[0].split() == [
        "AT",
        "PROVIDER",
        "BATCH",
        "KIND",
        "STATUS",
        "POLICY",
        "DETAIL",
    ]
    assert len(table.splitlines()) == 5
    for bad in (["--kind", "trackd"], ["--since", "yesterday"], ["--limit", "0"]):
        result = await cli("events", *bad)
        assert result.code == 2 and result.err.count("\n") == 1, bad


async def test_a_long_event_table_streams_in_aligned_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Past the rows that size its columns, a streamed table keeps their widths."""
    from datetime import UTC, datetime

    from watchdog.cli.commands import HEAD_ROWS, write_events

    async def rows() -> Any:
        for i in range(HEAD_ROWS + 50):
            yield {
                "at": datetime(2026, 11, 29, tzinfo=UTC),
                "provider": "sim",
                "batch_id": f"batch_{i:04d}",
                "kind": "tracked",
                "from_status": None,
                "to_status": None,
                "policy": None,
                "detail": None,
            }

    await write_events(rows(), as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == HEAD_ROWS + 51
    assert len({line.index("tracked") for line in lines[1:]}) == 1  # one column
    await write_events(rows(), as_json=True)
    assert len(json.loads(capsys.readouterr().out)) == HEAD_ROWS + 50
