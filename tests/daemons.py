"""Daemon processes for tests: ``batch-watchdog run`` as a real subprocess whose JSON
log lines are read as they come."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import API_KEY


def write_config(path: Path, *, db_url: str, sim_url: str, extra: str = "") -> Path:
    path.write_text(f"""
database_url: {db_url}
poll_interval: 2s
safety: {{max_cancels_per_tick: 1000, max_cancels_per_hour: 100000}}
log_format: json
http: {{port: 0}}
bulk_refresh_at: 0  # these tests watch per-batch GETs
providers:
  sim:
    base_url: {sim_url}
    api_key_env: SIM_TOKEN
pricing:
  - {{model: "meta-llama/*", input: 0.03, output: 0.05}}
policies:
  - name: cost-cap
    when: {{cost_usd_above: 5}}
    action: cancel
{extra}""")
    return path


class Daemon:
    """One ``run`` process; ``events`` holds its parsed log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        config: Path,
        *,
        command: str = "run",
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watchdog",
            command,
            "--config",
            str(config),
            *(args or []),
            env=base | {"SIM_TOKEN": API_KEY} | (env or {}),
            cwd=config.parent,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode()
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(text))

    def ticks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "tick_completed"]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 90.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.proc.returncode is not None:
                        raise AssertionError("daemon exited:\n" + "".join(self.raw[-20:]))
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout}s; last lines:\n" + "".join(self.raw[-30:])
            ) from None

    async def wait_for_async(
        self, probe: Callable[[], Awaitable[Any]], want: Any, timeout: float = 90.0
    ) -> None:
        """Until ``await probe()`` gives ``want`` (an endpoint's answer, say)."""
        got: Any = None
        try:
            async with asyncio.timeout(timeout):
                while (got := await probe()) != want:
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"not {want!r} within {timeout}s: last {got!r}") from None

    async def stop(self, timeout: float = 90.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            await self._reader
            raise AssertionError(
                f"still running {timeout}s after SIGTERM; last lines:\n" + "".join(self.raw[-30:])
            ) from None
        await self._reader
        return code

    async def finish(self, timeout: float = 60.0) -> int:
        """Wait for a command that ends by itself (migrate, track)."""
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    async def kill(self) -> None:
        self.proc.kill()
        await self.proc.wait()
        await self._reader
