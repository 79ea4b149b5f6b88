"""``python -m benchmarks.history [--finished 1000000] [--events 1000000] [--database
URL]``: an idle tick with realistic history — a million finished batches and a million
recent events beside a hundred running ones, none due — on SQLite or a fresh PostgreSQL
database; and ``events --json`` over all of it (its wall time and peak RSS)."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.steady import fresh_database

RUNNING = 100


def fill(dialect: str, finished: int, events: int) -> list[str]:
    """Statements that write the history inside the database (fast on both)."""
    if dialect == "postgresql":
        series = "generate_series(1, {n}) AS s(i)"
        return [
            "INSERT INTO batches (provider, batch_id, status, tracked_at, last_polled_at) "
            "SELECT 'sim', 'done_' || i, 'completed', now(), now() FROM "
            + series.format(n=finished),
            "INSERT INTO batch_events (at, provider, batch_id, kind, to_status) "
            "SELECT now() - (i % 3600) * interval '1 second', 'sim', 'done_' || (i % 50000), "
            "CASE WHEN i % 10 = 0 THEN 'cancel_requested' ELSE 'counts_changed' END, "
            "'in_progress' FROM " + series.format(n=events),
            "ANALYZE",
        ]
    count = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
    now = datetime.now(UTC).isoformat(sep=" ")
    return [
        count.format(n=finished)
        + "INSERT INTO batches (provider, batch_id, status, tracked_at, last_polled_at, "
        "poll_failures, cancel_attempts, cancel_retries) "
        f"SELECT 'sim', 'done_' || i, 'completed', '{now}', '{now}', 0, 0, 0 FROM s",
        count.format(n=events)
        + "INSERT INTO batch_events (at, provider, batch_id, kind, to_status) "
        f"SELECT '{now}', 'sim', 'done_' || (i % 50000), "
        "CASE WHEN i % 10 = 0 THEN 'cancel_requested' ELSE 'counts_changed' END, "
        "'in_progress' FROM s",
        "ANALYZE",
    ]


async def build(url: str, finished: int, events: int) -> None:
    from sqlalchemy import insert, text

    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.tables import batches

    db = create_engine(url)
    await upgrade(db)
    later = datetime.now(UTC) + timedelta(hours=1)
    async with db.begin() as conn:
        for statement in fill(db.dialect.name, finished, events):
            await conn.execute(text(statement))
        rows = [
            {"provider": "sim", "batch_id": f"run_{i}", "status": "in_progress"}
            | {"next_poll_at": later, "tracked_at": later, "poll_failures": 0}
            for i in range(RUNNING)
        ]
        await conn.execute(insert(batches), rows)
    await db.dispose()


async def idle_ticks(url: str, n: int = 7) -> list[float]:
    from datetime import timedelta as td

    from benchmarks.contenders import NullStream
    from watchdog.core.cadence import Cadence
    from watchdog.core.observe import Rules
    from watchdog.daemon import logs
    from watchdog.daemon.engine import Engine
    from watchdog.storage.database import create_engine
    from watchdog.storage.store import Store

    logs.configure("info", "json", NullStream())
    db = create_engine(url)
    engine = Engine(
        store=Store(db), clients={}, rules=Rules((), ()), cadence=Cadence(td(minutes=1)), owner="x"
    )
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        summary = await engine.tick()
        times.append((time.perf_counter() - t0) * 1000)
        assert summary.claimed == 0
    await db.dispose()
    return times


def events_json(url: str) -> dict[str, Any]:
    """``batch-watchdog events --json`` over everything, in a process of its own."""
    tmp = Path(tempfile.mkdtemp(prefix="wd-history-"))
    config = tmp / "w.yaml"
    config.write_text(
        f"database_url: {url}\nproviders: {{sim: {{base_url: 'http://127.0.0.1:1/v1'}}}}\n"
        "pricing: [{model: m, input: 1, output: 1}]\n"
        "policies: [{name: p, when: {cost_usd_above: 1}, action: cancel}]\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    with open(tmp / "out.json", "wb") as out:
        subprocess.run(
            [sys.executable, "-m", "watchdog", "events", "--json", "--config", str(config)],
            stdout=out,
            check=True,
        )
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    size = (tmp / "out.json").stat().st_size
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(max(rss, before) / 1024, 1),
        "mb": size // 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database", metavar="URL", help="a PostgreSQL server URL")
    parser.add_argument("--skip-events-json", action="store_true")
    args = parser.parse_args()
    url, cleanup = asyncio.run(fresh_database(args.database))
    t0 = time.perf_counter()
    asyncio.run(build(url, args.finished, args.events))
    built = time.perf_counter() - t0
    ticks = asyncio.run(idle_ticks(url))
    figures: dict[str, Any] = {
        "database": url.split(":")[0],
        "finished": args.finished,
        "events": args.events,
        "build_s": round(built, 1),
        "idle_tick_ms": {
            "median": round(statistics.median(ticks[1:]), 2),
            "all": [round(t, 1) for t in ticks],
        },
    }
    if not args.skip_events_json:
        figures["events_json"] = events_json(url)
    if cleanup is not None:
        asyncio.run(drop(cleanup))
    print(json.dumps(figures, indent=1))


async def drop(cleanup: Any) -> None:
    from sqlalchemy import text

    admin, name = cleanup
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


if __name__ == "__main__":
    main()
