"""``python -m benchmarks.steady --batches 10000 --passes 5 [--database URL]``: the
steady state. The simulator (its own process) holds N batches — 90 % unchanged between
polls, 9 % progressing, 1 % over the cap — and the watchdog engine, on SQLite or on a
fresh PostgreSQL database, polls them all once (the first pass), then ``--passes``
more times, its clock advanced by the poll interval before each, as the daemon's loop
would. Prints per steady pass: CPU s per 1,000 polls, tick duration, rows and (on
PostgreSQL) bytes written per poll, the HOT-update ratio and table growth; peak RSS."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.contenders import POLICIES, PRICE, NullStream, usage
from benchmarks.run import start_simulator

INTERVAL = timedelta(minutes=1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def fresh_database(admin_url: str | None) -> tuple[str, Any]:
    """A SQLite file, or a new database on the PostgreSQL server at ``admin_url``."""
    if admin_url is None:
        return f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='wd-steady-')}/steady.db", None
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"watchdog_steady_{secrets.token_hex(4)}"
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), (
        admin,
        name,
    )


async def pg_stats(db: Any) -> dict[str, int]:
    """Updates, HOT updates and the heap's size of ``batches`` (PostgreSQL)."""
    from sqlalchemy import text

    async with db.connect() as conn:
        await conn.execute(text("SELECT pg_stat_force_next_flush()"))
        row = (
            await conn.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('batches'), "
                    "pg_total_relation_size('batches'), "
                    "(SELECT sum(pg_stat_get_db_blocks_hit(oid) * 0) FROM pg_database LIMIT 1) "
                    "FROM pg_stat_user_tables WHERE relname = 'batches'"
                )
            )
        ).one()
        wal = (await conn.execute(text("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))).scalar()
    return {"upd": row[0], "hot": row[1], "heap": row[2], "total": row[3], "wal": int(wal)}


async def run(url: str, n: int, passes: int, admin: str | None) -> dict[str, Any]:
    from sqlalchemy import event, insert

    from watchdog.core.cadence import Cadence
    from watchdog.core.config import SafetySettings
    from watchdog.core.observe import Rules
    from watchdog.core.policies import Policy
    from watchdog.core.pricing import Price
    from watchdog.daemon import logs
    from watchdog.daemon.engine import Engine
    from watchdog.providers.client import ProviderClient
    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.store import Store
    from watchdog.storage.tables import batches

    logs.configure("info", "json", NullStream())  # the daemon logs as usual, to nowhere
    database, cleanup = await fresh_database(admin)
    db = create_engine(database)
    await upgrade(db)
    async with db.begin() as conn:
        rows = [{"provider": "sim", "batch_id": f"batch_{i:07d}"} for i in range(n)]
        await conn.execute(insert(batches), rows)
    written = {"rows": 0}

    def count(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            written["rows"] += len(params) if many else 1

    event.listen(db.sync_engine, "before_cursor_execute", count)
    limits = SafetySettings(max_cancels_per_tick=10**9, max_cancels_per_hour=10**9)
    policies = tuple(Policy.model_validate(p) for p in POLICIES)
    rules = Rules(policies, (Price.model_validate(PRICE),), False, limits)
    clock = Clock()
    client = ProviderClient("sim", base_url=url, api_key=None, concurrency=16, max_retries=0)
    dialect = db.dialect.name
    figures: dict[str, Any] = {"dialect": dialect, "batches": n, "passes": []}
    async with client:
        engine = Engine(
            store=Store(db),
            clients={"sim": client},
            rules=rules,
            cadence=Cadence(INTERVAL),
            owner="steady",
            clock=clock,
        )
        first = await timed(engine.tick)
        figures["first_pass"] = first
        for _ in range(passes):
            clock.now += INTERVAL
            before = await pg_stats(db) if dialect == "postgresql" else None
            written["rows"] = 0
            one = await timed(engine.tick)
            one["rows_per_poll"] = round(written["rows"] / max(one["polls"], 1), 3)
            if before is not None:
                after = await pg_stats(db)
                upd = after["upd"] - before["upd"]
                one["hot_ratio"] = round((after["hot"] - before["hot"]) / max(upd, 1), 3)
                one["wal_bytes_per_poll"] = round((after["wal"] - before["wal"]) / one["polls"])
                one["heap_mb"] = round(after["heap"] / 2**20, 2)
            figures["passes"].append(one)
    await db.dispose()
    if cleanup is not None:
        from sqlalchemy import text

        admin_engine, name = cleanup
        async with admin_engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin_engine.dispose()
    figures["peak_rss_mb"] = round(usage()[1], 1)
    return figures


async def timed(tick: Any) -> dict[str, Any]:
    cpu0, _ = usage()
    t0 = time.perf_counter()
    summary = await tick()
    wall, (cpu1, _) = time.perf_counter() - t0, usage()
    polls = summary.polled + summary.poll_failed
    return {
        "polls": polls,
        "tick_s": round(wall, 3),
        "cpu_s_per_1000_polls": round((cpu1 - cpu0) / max(polls, 1) * 1000, 3),
        "cancels": summary.cancel_succeeded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument(
        "--database", metavar="URL", help="a PostgreSQL server URL (default: SQLite)"
    )
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    sim, url = start_simulator(args.batches, "steady")
    try:
        figures = asyncio.run(run(url, args.batches, args.passes, args.database))
    finally:
        sim.terminate()
        sim.wait()
    steady = figures["passes"]
    cpu = sorted(p["cpu_s_per_1000_polls"] for p in steady)
    figures["median_cpu_s_per_1000_polls"] = cpu[len(cpu) // 2]
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=1)


if __name__ == "__main__":
    main()
