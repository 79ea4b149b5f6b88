"""``python -m benchmarks.overshoot``: how far spend runs past a $5 cost cap before the
cancel, polling every 60 s against adaptive polling. Simulated time, in one process:
the simulator on a local port, the engine on a temporary SQLite file, the clock moved
from one due poll to the next."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from watchdog import logs
from watchdog.engine import Engine, Rules
from watchdog.models import TERMINAL
from watchdog.policies import Policy
from watchdog.pricing import Price
from watchdog.providers import ProviderClient
from watchdog.settings import SafetySettings
from watchdog.store import Store, create_engine, upgrade
from watchdog.tables import batches

CAP = 5.0
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PER_REQUEST = 0.001  # 20,000 input + 8,000 output tokens at $0.03 / $0.05 per 1M


class Clock:
    def __init__(self) -> None:
        self.t = 1_764_320_400.0

    def time(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


async def run(adaptive: bool, n: int, seed: int) -> list[float]:
    """Overshoot of each batch, in % of the cap."""
    from watchdog.simulator import Simulator

    clock, rng = Clock(), Random(seed)
    sim = Simulator(clock=clock.time)
    for i in range(n):  # $0.05 to $2 a minute: the cap comes after 2.5 to 100 minutes
        per_minute = rng.uniform(0.05, 2.0)
        sim.add(
            f"batch_{i:04d}",
            model=LLAMA,
            total=10**7,
            rate=per_minute / 60 / PER_REQUEST,
            age=rng.uniform(0, 60),
            input_tokens=20_000,
            output_tokens=8_000,
        )
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    db = create_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/overshoot.db")
    await upgrade(db)
    store = Store(db)
    for batch_id in sim.batches:
        await store.track("sim", batch_id, {}, clock.now())
    policy = Policy.model_validate(
        {"name": "cap", "when": {"cost_usd_above": CAP}, "action": "cancel"}
    )
    rules = Rules(
        (policy,),
        (Price(model="meta-llama/*", input=0.03, output=0.05),),  # type: ignore[arg-type]
        False,
        SafetySettings(max_cancels_per_tick=10**6, max_cancels_per_hour=10**6),
    )
    async with ProviderClient("sim", base_url=url, api_key=None) as client:
        engine = Engine(
            store=store,
            clients={"sim": client},
            rules=rules,
            poll_interval=timedelta(seconds=60),
            owner="bench",
            clock=clock.now,
            adaptive=adaptive,
        )
        while any(b.cancel_at is None for b in sim.batches.values()):
            await engine.tick()
            clock.t = max(clock.t + 0.001, await next_due(store))
    await db.dispose()
    await runner.cleanup()
    return [overshoot(b) for b in sim.batches.values()]


async def next_due(store: Store) -> float:
    c = batches.c
    query = select(func.min(c.next_poll_at)).where(c.status.not_in(TERMINAL))
    async with store.engine.connect() as conn:
        when = (await conn.execute(query)).scalar()
    return when.timestamp() if when is not None else float("inf")


def overshoot(batch: Any) -> float:
    usage = batch.wire(batch.cancel_at)["usage"]
    cost = (usage["input_tokens"] * 0.03 + usage["output_tokens"] * 0.05) / 1_000_000
    return (cost - CAP) / CAP * 100


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_pct": round(statistics.median(ordered), 2),
        "p90_pct": round(ordered[int(len(ordered) * 0.9) - 1], 2),
        "max_pct": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    logs.configure("warning", "json")
    figures = {
        mode: summary(asyncio.run(run(mode == "adaptive", args.batches, args.seed)))
        for mode in ("fixed", "adaptive")
    }
    for mode, f in figures.items():
        print(
            f"{mode:9} overshoot of a ${CAP:g} cap at poll_interval 60s: median "
            f"{f['median_pct']} %, p90 {f['p90_pct']} %, max {f['max_pct']} %"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"batches": args.batches, "seed": args.seed, **figures}, out, indent=2)


if __name__ == "__main__":
    main()
