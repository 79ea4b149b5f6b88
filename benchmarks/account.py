"""``python -m benchmarks.account [--batches 1000,10000,100000] [--database URL]
[--parts budget,page,discovery,replay]``: what the account-level features cost as the
account's history grows — the idle tick with and without a budget over N batches in its
window; the status page and /metrics of a running daemon (and its ticks) while the
page is asked for 5 times a second; discovery's requests per interval for 1,000
running batches among many finished; replay and report (time, peak RSS). SQLite by
default, or a fresh database on the PostgreSQL server at URL. Prints JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.history import drop
from benchmarks.steady import fresh_database

TEAMS = ("research", "ops", "eval", "prod")
SAMPLES = 10  # per batch, for replay


def batch_rows(n: int, now: datetime) -> list[dict[str, Any]]:
    """N finished batches created over the last 20 hours, each with a known cost."""
    from decimal import Decimal

    return [
        {
            "provider": "sim",
            "batch_id": f"done_{i:07d}",
            "status": "completed",
            "model": "meta-llama/Meta-Llama-3.1-8B-Instruct",
            "metadata": {"team": TEAMS[i % len(TEAMS)]},
            "created_at": now - timedelta(seconds=72_000 * i / max(n, 1)),
            # Ended ten minutes after creation, and none in the last ten minutes: an idle
            # account (the newest would otherwise end in the future, read at every tick).
            "finished_at": min(
                now - timedelta(seconds=72_000 * i / max(n, 1) - 600),
                now - timedelta(minutes=10),
            ),
            "cost_usd": Decimal("0.25"),
            "tracked_at": now - timedelta(days=1),
            "poll_failures": 0,
            "cancel_attempts": 0,
            "cancel_retries": 0,
            "request_total": 100,
            "request_completed": 100,
            "request_failed": 0,
        }
        for i in range(n)
    ]


async def build(url: str, n: int, events: int = 0, samples: bool = False) -> None:
    """N finished batches (and, with ``samples``, ten samples each; with ``events``, that
    many old events) and 100 running ones not due for an hour."""
    from sqlalchemy import insert, text

    from benchmarks.history import fill
    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.tables import batch_samples, batches

    db = create_engine(url)
    await upgrade(db)
    now, later = datetime.now(UTC), datetime.now(UTC) + timedelta(hours=1)
    async with db.begin() as conn:
        rows = batch_rows(n, now)
        for start in range(0, n, 5000):
            await conn.execute(insert(batches), rows[start : start + 5000])
        running = [
            {"provider": "sim", "batch_id": f"run_{i}", "status": "in_progress"}
            | {"next_poll_at": later, "tracked_at": now, "poll_failures": 0}
            for i in range(100)
        ]
        await conn.execute(insert(batches), running)
        if events:  # the events statement of benchmarks.history (its second)
            await conn.execute(text(fill(db.dialect.name, 0, events)[1]))
        if samples:
            await conn.execute(insert(batch_samples), list(sample_rows(rows)))
        await conn.execute(text("ANALYZE"))
    await db.dispose()


def sample_rows(rows: list[dict[str, Any]]) -> Any:
    for row in rows:
        for k in range(SAMPLES):
            done = 10 * (k + 1)
            yield {
                "at": row["created_at"] + timedelta(seconds=60 * k),
                "provider": "sim",
                "batch_id": row["batch_id"],
                "status": "completed" if k == SAMPLES - 1 else "in_progress",
                "request_total": 100,
                "request_completed": done,
                "request_failed": 0,
                "input_tokens": done * 20_000,
                "output_tokens": done * 5_000,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
            }


BUDGET = {"name": "teams", "limit_usd": 1_000_000, "window": "1d", "group_by": ["metadata.team"]}


async def idle_ticks(url: str, budgets: bool, n: int = 9) -> dict[str, Any]:
    """Idle ticks (nothing due) with no budget or one grouped budget; the first tick
    with a budget builds the daemon's book (reported apart)."""
    from benchmarks.contenders import NullStream
    from watchdog.core.cadence import Cadence
    from watchdog.daemon import logs
    from watchdog.daemon.engine import Engine
    from watchdog.settings import Settings
    from watchdog.storage.database import create_engine
    from watchdog.storage.store import Store

    logs.configure("info", "json", NullStream())
    settings = Settings(budgets=[BUDGET] if budgets else [])
    db = create_engine(url)
    engine = Engine(store=Store(db), clients={}, rules=settings.rules(),
                    cadence=Cadence(timedelta(minutes=1)), owner="x")  # fmt: skip
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await engine.tick()
        times.append((time.perf_counter() - t0) * 1000)
    await db.dispose()
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times[1:]), 2)}


def budget_part(url: str) -> dict[str, Any]:
    without = asyncio.run(idle_ticks(url, budgets=False))
    with_one = asyncio.run(idle_ticks(url, budgets=True))
    return {
        "idle_tick_ms": without["median_ms"],
        "with_budget_ms": with_one["median_ms"],
        "ratio": round(with_one["median_ms"] / max(without["median_ms"], 0.01), 2),
        "book_built_ms": with_one["first_ms"],
    }


async def page_part(url: str, seconds: float = 30.0) -> dict[str, Any]:
    """A real daemon (``batch-watchdog run``) on this database: its tick durations quiet,
    then while GET / is asked 5 times a second (and /metrics once a second); the
    page's and the scrape's latencies."""
    import aiohttp

    tmp = Path(tempfile.mkdtemp(prefix="wd-account-"))
    config = tmp / "w.yaml"
    config.write_text(
        f"database_url: {url}\npoll_interval: 1s\nlog_format: json\nhttp: {{port: 0}}\n"
        "providers: {sim: {base_url: 'http://127.0.0.1:1/v1'}}\n"
        f"budgets: [{json.dumps(BUDGET)}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watchdog", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    reader = asyncio.create_task(_read(proc, lines))
    try:
        port = await _port(lines)
        base = f"http://127.0.0.1:{port}"
        await asyncio.sleep(5)  # the book built, the first snapshot taken
        mark = len(lines)
        await asyncio.sleep(seconds)
        quiet = _ticks(lines[mark:])
        mark = len(lines)
        async with aiohttp.ClientSession() as http:
            page, scrape = await _hammer(http, base, seconds)
        loaded = _ticks(lines[mark:])
    finally:
        proc.terminate()
        await proc.wait()
        await reader
    return {
        "tick_ms_quiet": _spread(quiet),
        "tick_ms_while_paged": _spread(loaded),
        "page_ms": _spread(page),
        "metrics_ms": _spread(scrape),
    }


async def _read(proc: Any, lines: list[dict[str, Any]]) -> None:
    async for raw in proc.stderr:
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))


async def _port(lines: list[dict[str, Any]]) -> int:
    async with asyncio.timeout(120):
        while True:
            for line in lines:
                if line.get("event") == "http_listening":
                    return int(line["port"])
            await asyncio.sleep(0.1)


def _ticks(lines: list[dict[str, Any]]) -> list[float]:
    return [float(e["duration_ms"]) for e in lines if e.get("event") == "tick_completed"]


async def _hammer(http: Any, base: str, seconds: float) -> tuple[list[float], list[float]]:
    page: list[float] = []
    scrape: list[float] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        async with http.get(base + "/") as response:
            await response.read()
        page.append((time.perf_counter() - t0) * 1000)
        if n % 5 == 0:
            t0 = time.perf_counter()
            async with http.get(base + "/metrics") as response:
                await response.read()
            scrape.append((time.perf_counter() - t0) * 1000)
        n += 1
        await asyncio.sleep(max(0.0, 0.2 - (time.perf_counter() - t0)))
    return page, scrape


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"n": len(values), "median": round(statistics.median(ordered), 1), "p99": round(p99, 1)}


async def discovery_part(finished: int) -> dict[str, Any]:
    """List requests and GETs per interval, steady state, for 1,000 running batches
    among ``finished`` finished ones (the simulator's list, in process): running all
    among the newest; spread over the last 20 hours; 999 new and one 20 hours old."""
    out = {}
    for name in ("newest", "spread_20h", "one_straggler"):
        out[name] = await _discovery_case(name, finished)
    return out


async def _discovery_case(case: str, finished: int) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer
    from pydantic import SecretStr

    from benchmarks.contenders import NullStream
    from watchdog.daemon import logs
    from watchdog.daemon.engine import Engine
    from watchdog.providers.client import ProviderClient
    from watchdog.settings import Settings
    from watchdog.sim.simulator import Simulator
    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.store import Store

    logs.configure("info", "json", NullStream())
    clock = [time.time()]
    sim = Simulator(clock=lambda: clock[0])
    span = 72_000.0
    for i in range(finished):
        sim.add(f"done_{i:07d}", age=60 + span * i / finished * 3, total=10, rate=10)
    for i in range(1000):
        age = {"newest": 30 + i * 0.5, "spread_20h": 60 + span * i / 1000,
               "one_straggler": span if i == 999 else 30 + i * 0.5}[case]  # fmt: skip
        sim.add(f"run_{i:04d}", age=age, total=10**9, rate=1)
    server = TestServer(sim.app())
    await server.start_server()
    url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='wd-disc-')}/d.db"
    db = create_engine(url)
    await upgrade(db)
    base = str(server.make_url("/v1"))
    sim_provider = {"base_url": base, "discover": {"created_within": "7d"}}
    settings = Settings(poll_interval="30s", providers={"sim": sim_provider})
    client = ProviderClient("sim", base_url=str(server.make_url("/v1")), api_key=SecretStr(""))
    async with client:
        engine = Engine(store=Store(db), clients={"sim": client}, rules=settings.rules(),
                        cadence=settings.cadence, owner="b",
                        clock=lambda: datetime.fromtimestamp(clock[0], UTC))  # fmt: skip
        per_interval = []
        for tick in range(5):
            lists, gets = _requests(sim)
            await engine.tick()
            clock[0] += 30
            after = _requests(sim)
            if tick >= 2:  # the first pass reads the whole look-back; then steady
                per_interval.append({"list": after[0] - lists, "get": after[1] - gets})
    await db.dispose()
    await server.close()
    return {"per_interval": per_interval[-1], "finished": finished, "running": 1000}


def _requests(sim: Any) -> tuple[int, int]:
    gets = sum(c.get("get", 0) for c in sim.calls.values())
    return sim.calls.get("(list)", {}).get("list", 0), gets


def replay_part(url: str) -> dict[str, Any]:
    """``replay --since 2d --json`` and ``report --since 2d --json`` over the samples, each
    in a process of its own: wall time and peak RSS."""
    tmp = Path(tempfile.mkdtemp(prefix="wd-replay-"))
    config = tmp / "w.yaml"
    config.write_text(
        f"database_url: {url}\npoll_interval: 60s\n"
        "providers: {sim: {base_url: 'http://127.0.0.1:1/v1'}}\n"
        "pricing: [{model: 'meta-llama/*', input: 0.03, output: 0.05}]\n"
        "policies: [{name: cap, when: {cost_usd_above: 0.2}, action: cancel},\n"
        "           {name: old, when: {age_above: 6h}, action: alert}]\n"
    )
    return {cmd: _timed(cmd, config) for cmd in ("replay", "report")}


def _timed(command: str, config: Path) -> dict[str, Any]:
    script = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [sys.executable, "-m", "watchdog", command, "--since", "2d", "--json",
            "--config", str(config)]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return {"wall_s": round(float(out[0]), 1), "peak_rss_mb": round(int(out[1]) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1000,10000,100000")
    parser.add_argument("--database", metavar="URL", help="a PostgreSQL server URL")
    parser.add_argument("--parts", default="budget,page,discovery,replay")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    for n in (int(x) for x in args.batches.split(",")):
        figures: dict[str, Any] = {"batches": n}
        if parts & {"budget", "page", "replay"}:
            url, cleanup = asyncio.run(fresh_database(args.database))
            figures["database"] = url.split(":")[0]
            asyncio.run(build(url, n, events=10 * n if "page" in parts else 0,
                              samples="replay" in parts))  # fmt: skip
            if "budget" in parts:
                figures["budget"] = budget_part(url)
            if "page" in parts:
                figures["page"] = asyncio.run(page_part(url))
            if "replay" in parts:
                figures["replay"] = replay_part(url)
            if cleanup is not None:
                asyncio.run(drop(cleanup))
        if "discovery" in parts:
            figures["discovery"] = asyncio.run(discovery_part(n))
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
