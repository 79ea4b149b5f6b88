"""The README's "Using it" steps, run verbatim in a shell as a newcomer would, from a
directory holding the shipped example config; only the environment points the example's
provider at the simulator (an explicit override, logged by the daemon)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from watchdog.sim.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent


def using_it() -> list[str]:
    """The command lines of the README's "Using it" block (comments stripped)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no ```sh block under 'Using it'"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


async def test_using_it_steps_work_verbatim(tmp_path: Path, aiohttp_server: Any) -> None:
    """Every step exits 0 (check-config included, so it checks what run checks), the
    dry run polls the tracked batch and records its events, and the daemon started by
    the last line ticks, logs where its settings came from, and stops on SIGTERM."""
    sim = Simulator()
    sim.add("batch_abc123", total=1000, rate=1.0, age=100)
    server = await aiohttp_server(sim.app())
    shutil.copytree(ROOT / "config", tmp_path / "config", ignore=shutil.ignore_patterns("*.py"))
    lines = using_it()
    assert lines[-1] == "batch-watchdog run", lines
    bin_dir = str(Path(sys.executable).parent)
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("WATCHDOG_")}
    env = clean | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "WATCHDOG_PROVIDERS__DEEPINFRA__BASE_URL": str(server.make_url("/v1")),
        "WATCHDOG_HTTP__PORT": "0",
    }
    env.pop("DEEPINFRA_TOKEN", None)
    script = "set -e\n" + "\n".join(lines[:-1]) + "\nexec " + lines[-1] + "\n"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    logged: list[dict[str, Any]] = []
    try:  # eight commands and a daemon's start: generous, for a loaded CI machine
        async with asyncio.timeout(120):
            async for raw in proc.stderr:
                try:
                    logged.append(json.loads(raw))
                except ValueError:
                    continue
                kinds = [e.get("event") for e in logged]
                # Only the daemon serves HTTP: wait for its first tick after that.
                if "http_listening" in kinds and kinds[-1] == "tick_completed":
                    break
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"no tick in 120 s; logged {logged}; printed {out.decode()}") from None
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise AssertionError("still running 30 s after SIGTERM") from None
    assert proc.returncode == 0, out.decode()[-2000:]
    text = out.decode()
    assert "config OK" in text and "tracking deepinfra/batch_abc123" in text
    assert "status_changed" in text  # `events batch_abc123` after the dry run
    assert "next tick: " in text and "9/9 hold" in text  # explain, test-policies
    assert "batches since" in text  # replay's totals
    started = next(e for e in logged if e["event"] == "daemon_started")
    assert started["dry_run"] is True and started["database_from"] == "file"
    overridden = {e["key"] for e in logged if e["event"] == "setting_overridden"}
    assert overridden == {"providers.deepinfra.base_url", "http.port"}
    # Discovery is on in the example: the batch is read from the list pass, not a GET.
    assert sim.calls["(list)"]["list"] >= 1 and sim.calls["batch_abc123"]["cancel"] == 0


def api_examples() -> list[str]:
    """The curl lines of the README's HTTP API examples."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("<!-- api-examples -->") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no ```sh block after <!-- api-examples -->"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


async def test_the_api_examples_work_verbatim(tmp_path: Path, aiohttp_server: Any) -> None:
    """Each curl line of the README against a running daemon (the example's provider
    name, its batch tracked, its token in the variable it names), the port the only
    thing changed: each answers 200 with the JSON the README describes."""
    from tests.daemons import Daemon

    sim = Simulator()
    sim.add("batch_abc123", total=1000, rate=1.0, age=100, metadata={"team": "research"})
    server = await aiohttp_server(sim.app())
    config = tmp_path / "w.yaml"
    config.write_text(
        f"database_url: sqlite+aiosqlite:///{tmp_path}/w.db\nlog_format: json\n"
        "http:\n  port: 0\n  tokens:\n    - {name: grafana, role: viewer, env: VIEWER_TOKEN}\n"
        "    - {name: oncall, role: operator, env: OPERATOR_TOKEN}\n"
        f"providers:\n  deepinfra: {{base_url: '{server.make_url('/v1')}'}}\n"
    )
    env = {"VIEWER_TOKEN": "viewer-0123456789abcdef", "OPERATOR_TOKEN": "op-0123456789abcdef"}
    tracking = await Daemon.start(
        config, command="track", args=["batch_abc123", "--provider", "deepinfra"], env=env
    )
    assert await tracking.finish() == 0
    daemon = await Daemon.start(config, env=env)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        port = next(e["port"] for e in daemon.events if e.get("event") == "http_listening")
        for line in api_examples():
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", line.replace("127.0.0.1:9464", f"127.0.0.1:{port}"),
                env=os.environ | env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0, line
            body = json.loads(out)
            assert isinstance(body, dict) and "error" not in body, (line, body)
    finally:
        await daemon.stop()
    logged = "".join(daemon.raw)
    assert "viewer-0123456789abcdef" not in logged and "op-0123456789abcdef" not in logged
    said = [e for e in daemon.events if e.get("event") == "api_write"]
    assert {e["actor"] for e in said} == {"oncall"} and len(said) == 5
