"""``python -m benchmarks.overshoot``: how far spend runs past a $5 cost cap before it
stops, polling every 60 s against adaptive polling — through the daemon's real tick loop
(APScheduler, early ticks and all), in accelerated time: the simulator and the engine
read a clock running ``--speed`` times faster than the wall, and the loop's interval and
wake-ups are scaled to match. ``--cancel-latency`` (requests that still complete after a
cancel) and ``--usage-lag`` (how far the reported usage trails the spend) are simulated
seconds. Overshoot = the true spend when requests stopped, over the cap."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

from aiohttp import web

from watchdog.core.cadence import Cadence
from watchdog.core.config import SafetySettings
from watchdog.core.observe import Rules
from watchdog.core.policies import Policy
from watchdog.core.pricing import Price
from watchdog.daemon import logs
from watchdog.daemon.engine import Engine
from watchdog.daemon.scheduler import TickLoop
from watchdog.providers.client import ProviderClient
from watchdog.sim.simulator import Simulator
from watchdog.storage.database import create_engine, upgrade
from watchdog.storage.store import Store

CAP = 5.0
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PER_REQUEST = 0.001  # 20,000 input + 8,000 output tokens at $0.03 / $0.05 per 1M
INTERVAL = 60.0  # poll_interval, simulated seconds
T0 = 1_764_320_400.0


class FastClock:
    """Simulated time: T0 plus ``speed`` times the wall time since the start."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start = time.monotonic()
        self.wall_start = datetime.now(UTC)

    def time(self) -> float:
        return T0 + (time.monotonic() - self.start) * self.speed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def to_wall(self, when: datetime) -> datetime:
        """The wall-clock moment at which simulated time reaches ``when``."""
        return self.wall_start + timedelta(seconds=(when.timestamp() - T0) / self.speed)


def populate(sim: Simulator, n: int, seed: int, latency: float, lag: float) -> None:
    rng = Random(seed)
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
            cancel_latency=latency,
            usage_lag=lag,
        )


def engine_for(store: Store, client: ProviderClient, clock: FastClock, adaptive: bool) -> Engine:
    policy = Policy.model_validate(
        {"name": "cap", "when": {"cost_usd_above": CAP}, "action": "cancel"}
    )
    rules = Rules(
        (policy,),
        (Price.model_validate({"model": "meta-llama/*", "input": 0.03, "output": 0.05}),),
        False,
        SafetySettings(max_cancels_per_tick=10**6, max_cancels_per_hour=10**6),
    )
    return Engine(
        store=store,
        clients={"sim": client},
        rules=rules,
        cadence=Cadence(timedelta(seconds=INTERVAL), adaptive),
        owner="bench",
        clock=clock.now,
    )


async def run(adaptive: bool, args: argparse.Namespace) -> list[float]:
    """Overshoot of each batch, in % of the cap."""
    clock = FastClock(args.speed)
    sim = Simulator(clock=clock.time)
    populate(sim, args.batches, args.seed, args.cancel_latency, args.usage_lag)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    db = create_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/overshoot.db")
    await upgrade(db)
    store = Store(db)
    for batch_id in sim.batches:
        await store.tracking.track("sim", batch_id, {}, clock.now())

    async def next_due() -> datetime | None:
        due = await store.claims.next_due(clock.now())
        return None if due is None else clock.to_wall(due)

    stop = asyncio.Event()
    async with ProviderClient("sim", base_url=url, api_key=None) as client:
        engine = engine_for(store, client, clock, adaptive)
        loop = TickLoop(
            engine.tick,
            Cadence(timedelta(seconds=INTERVAL / args.speed)),
            next_due=next_due,
        )
        watcher = asyncio.create_task(_until_all_cancelled(sim, stop, clock, args.timeout))
        await loop.run(stop)
        await watcher
    await db.dispose()
    await runner.cleanup()
    return [overshoot(b) for b in sim.batches.values() if b.cancel_at is not None]


async def _until_all_cancelled(
    sim: Simulator, stop: asyncio.Event, clock: FastClock, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if all(b.cancel_at is not None for b in sim.batches.values()):
            break
    stop.set()


def overshoot(batch: Any) -> float:
    """The true spend when requests stopped (not the lagging reported usage), over the cap."""
    completed = batch.completed(batch.cancel_at + batch.cancel_latency)
    cost = completed * (batch.input_tokens * 0.03 + batch.output_tokens * 0.05) / 1_000_000
    return float((cost - CAP) / CAP * 100)


def summary(values: list[float], batches: int) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "cancelled": len(ordered),
        "of": batches,
        "median_pct": round(statistics.median(ordered), 2),
        "p90_pct": round(ordered[max(int(len(ordered) * 0.9) - 1, 0)], 2),
        "max_pct": round(ordered[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--speed", type=float, default=60.0, help="simulated s per wall s")
    parser.add_argument("--cancel-latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--usage-lag", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--timeout", type=float, default=300.0, help="wall seconds per mode")
    parser.add_argument("--modes", default="fixed,adaptive")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    logs.configure("warning", "json")
    figures = {
        mode: summary(asyncio.run(run(mode == "adaptive", args)), args.batches)
        for mode in args.modes.split(",")
    }
    for mode, f in figures.items():
        print(
            f"{mode:9} overshoot of a ${CAP:g} cap at poll_interval 60s ({args.speed:g}x, cancel "
            f"latency {args.cancel_latency:g}s, usage lag {args.usage_lag:g}s): median "
            f"{f['median_pct']} %, p90 {f['p90_pct']} %, max {f['max_pct']} % "
            f"({f['cancelled']} of {f['of']} cancelled)"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"params": vars(args), **figures}, out, indent=2)


if __name__ == "__main__":
    main()
