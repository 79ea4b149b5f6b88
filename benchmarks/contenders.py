"""One benchmark contender per process (so CPU and peak RSS are its own): the watchdog
engine, a loop on the official openai SDK, and a bare aiohttp GET loop (the ceiling).
Each fetches every batch, judges the same three policies and cancels the violators
(the bare loop only fetches). Prints one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

POLICIES = [
    {"name": "cost-cap", "when": {"cost_usd_above": 5}, "action": "cancel"},
    {
        "name": "failing",
        "when": {"failure_ratio_above": 0.2, "min_requests": 50},
        "action": "cancel",
    },
    {
        "name": "expiring-slow",
        "when": {"expires_within": "1h", "progress_below": 0.5},
        "action": "cancel",
    },
]
PRICE = {"model": "meta-llama/*", "input": 0.03, "output": 0.05}


class NullStream(io.StringIO):
    """Where the watchdog's log lines go during a benchmark: rendered, then dropped."""

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return False


def ids(n: int) -> list[str]:
    return [f"batch_{i:07d}" for i in range(n)]


def usage() -> tuple[float, float]:
    """(user+sys CPU seconds, peak RSS in MB) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024


async def measured(work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    cpu0, _ = usage()
    t0 = time.perf_counter()
    result = await work()
    wall = time.perf_counter() - t0
    cpu1, rss = usage()
    polls = result["polls"]
    return result | {
        "wall_s": round(wall, 3),
        "polls_per_s": round(polls / wall, 1),
        "cpu_s_per_1000_polls": round((cpu1 - cpu0) / polls * 1000, 4),
        "peak_rss_mb": round(rss, 1),
    }


async def watchdog_pass(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from sqlalchemy import event, insert
    from sqlalchemy.ext.asyncio import AsyncEngine

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
    tmp = tempfile.mkdtemp(prefix="wd-bench-")
    db: AsyncEngine = create_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
    await upgrade(db)
    async with db.begin() as conn:
        await conn.execute(insert(batches), [{"provider": "sim", "batch_id": i} for i in ids(n)])
    rows = {"statements": 0, "rows": 0}

    def count(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            rows["statements"] += 1
            rows["rows"] += len(params) if many else 1

    event.listen(db.sync_engine, "before_cursor_execute", count)
    limits = SafetySettings(max_cancels_per_tick=10**9, max_cancels_per_hour=10**9)
    rules = Rules(
        tuple(Policy.model_validate(p) for p in POLICIES),
        (Price.model_validate(PRICE),),
        False,
        limits,
    )
    client = ProviderClient(
        "sim", base_url=url, api_key=None, concurrency=concurrency, max_retries=0
    )
    async with client:
        engine = Engine(
            store=Store(db),
            clients={"sim": client},
            rules=rules,
            cadence=Cadence(timedelta(minutes=10)),
            owner="bench",
        )

        async def full_pass() -> dict[str, Any]:
            summary = await engine.tick()
            return {
                "polls": summary.polled,
                "cancels": summary.cancel_succeeded,
                "poll_failed": summary.poll_failed,
            }

        result = await measured(full_pass)
        t0 = time.perf_counter()
        await engine.tick()
        idle_ms = (time.perf_counter() - t0) * 1000
    await db.dispose()
    return result | {
        "rows_written": rows["rows"],
        "write_statements": rows["statements"],
        "idle_tick_ms": round(idle_ms, 2),
        "http_requests": await simulator_requests(url),
    }


async def simulator_requests(url: str) -> dict[str, int]:
    """GETs, list pages and cancels the simulator answered (the bulk refresh's figure)."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(url.removesuffix("/v1") + "/_sim/calls") as resp,
    ):
        calls = await resp.json()
    totals: dict[str, int] = {}
    for counts in calls.values():
        for kind, n in counts.items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def violates(b: Any, now: float) -> bool:
    """The three policies, written the way a user would in a script."""
    counts, use = b.request_counts, b.usage
    if use is not None:
        cached = use.input_tokens_details.cached_tokens if use.input_tokens_details else 0
        cost = (
            (use.input_tokens - cached) * Decimal("0.03")
            + cached * Decimal("0.03")
            + use.output_tokens * Decimal("0.05")
        ) / 1_000_000
        if cost > 5:
            return True
    if counts is not None:
        finished = counts.completed + counts.failed
        if finished >= 50 and counts.failed / finished > 0.2:
            return True
        if (
            b.expires_at
            and b.expires_at - now < 3600
            and counts.total
            and finished / counts.total < 0.5
        ):
            return True
    return False


async def openai_pass(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    slots = asyncio.Semaphore(concurrency)
    cancels = 0

    async def one(batch_id: str) -> None:
        nonlocal cancels
        async with slots:
            batch = await client.batches.retrieve(batch_id)
        if batch.status == "in_progress" and violates(batch, time.time()):
            async with slots:
                await client.batches.cancel(batch_id)
            cancels += 1

    async def full_pass() -> dict[str, Any]:
        await asyncio.gather(*(one(i) for i in ids(n)))
        return {"polls": n, "cancels": cancels}

    try:
        return await measured(full_pass)
    finally:
        await client.close()


async def aiohttp_pass(url: str, n: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(batch_id: str) -> None:
            async with slots, session.get(f"{url}/batches/{batch_id}") as resp:
                json.loads(await resp.read())

        async def full_pass() -> dict[str, Any]:
            await asyncio.gather(*(one(i) for i in ids(n)))
            return {"polls": n, "cancels": 0}

        return await measured(full_pass)


async def idle_tick(n: int) -> dict[str, Any]:
    """The duration of a tick that finds nothing due, with n tracked batches."""
    from sqlalchemy import insert

    from watchdog.core.cadence import Cadence
    from watchdog.core.observe import Rules
    from watchdog.daemon import logs
    from watchdog.daemon.engine import Engine
    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.store import Store
    from watchdog.storage.tables import batches

    logs.configure("info", "json", NullStream())
    tmp = tempfile.mkdtemp(prefix="wd-bench-")
    db = create_engine(f"sqlite+aiosqlite:///{tmp}/idle.db")
    await upgrade(db)
    later = datetime.now(UTC) + timedelta(hours=1)
    async with db.begin() as conn:
        for start in range(0, n, 10_000):
            await conn.execute(
                insert(batches),
                [
                    {
                        "provider": "sim",
                        "batch_id": f"batch_{i:07d}",
                        "status": "in_progress",
                        "next_poll_at": later,
                    }
                    for i in range(start, min(n, start + 10_000))
                ],
            )
    engine = Engine(
        store=Store(db),
        clients={},
        rules=Rules((), ()),
        cadence=Cadence(timedelta(minutes=1)),
        owner="bench",
    )
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        await engine.tick()
        times.append((time.perf_counter() - t0) * 1000)
    await db.dispose()
    _, rss = usage()
    return {"tracked": n, "idle_tick_ms": round(sorted(times)[3], 2), "peak_rss_mb": round(rss, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["watchdog", "openai", "aiohttp", "idle"])
    parser.add_argument("--url", default="")
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.kind == "idle":
        result = asyncio.run(idle_tick(args.batches))
    else:
        run = {"watchdog": watchdog_pass, "openai": openai_pass, "aiohttp": aiohttp_pass}
        result = asyncio.run(run[args.kind](args.url, args.batches, args.concurrency))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
