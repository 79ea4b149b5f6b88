"""``python -m benchmarks.replicas --database postgresql+psycopg://…/test [--batches
10000] [--seconds 60] [--replicas 1 3]``: N ``batch-watchdog run`` processes on one
fresh PostgreSQL database against the steady-state simulator (its own process), for a
fixed time each. Prints, per N: polls per second, the whole set's CPU seconds (its
processes' user + system time) and polls per CPU second, and the list pages read."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import start_simulator
from benchmarks.steady import fresh_database

CONFIG = """database_url: {db}
poll_interval: {interval}
log_format: json
http: {{enabled: false}}
safety: {{max_cancels_per_tick: 100000, max_cancels_per_hour: 1000000}}
providers:
  sim: {{base_url: "{url}"}}
pricing:
  - {{model: "meta-llama/*", input: 0.03, output: 0.05}}
policies:
  - {{name: cost-cap, when: {{cost_usd_above: 5}}, action: cancel}}
"""


async def tracked(db: str, n: int) -> None:
    from sqlalchemy import insert

    from watchdog.storage.database import create_engine, upgrade
    from watchdog.storage.tables import batches

    engine = create_engine(db)
    await upgrade(engine)
    async with engine.begin() as conn:
        rows = [{"provider": "sim", "batch_id": f"batch_{i:07d}"} for i in range(n)]
        await conn.execute(insert(batches), rows)
    await engine.dispose()


def run_set(config: Path, replicas: int, seconds: float) -> dict[str, Any]:
    """Start ``replicas`` daemons, let them run, stop them; their polls and CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    logs = [config.with_suffix(f".{i}.log") for i in range(replicas)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "watchdog", "run", "--config", str(config)],
            stderr=log.open("w"),
            env=env,
        )
        for log in logs
    ]
    time.sleep(seconds)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    polls = 0
    for log in logs:
        for line in log.read_text().splitlines():
            if '"tick_completed"' in line:
                polls += json.loads(line).get("polled", 0)
    return {
        "replicas": replicas,
        "polls": polls,
        "polls_per_s": round(polls / seconds, 1),
        "cpu_s": round(cpu, 1),
        "polls_per_cpu_s": round(polls / max(cpu, 1e-9), 1),
    }


async def sim_calls(url: str) -> dict[str, int]:
    from benchmarks.contenders import simulator_requests

    return await simulator_requests(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", metavar="URL", required=True)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--interval", default="2s", help="poll_interval: short enough to find the capacity"
    )
    args = parser.parse_args()
    results = []
    for replicas in args.replicas:
        sim, url = start_simulator(args.batches, "steady")
        db, cleanup = asyncio.run(fresh_database(args.database))
        try:
            asyncio.run(tracked(db, args.batches))
            config = Path(tempfile.mkdtemp(prefix="wd-replicas-")) / "w.yaml"
            config.write_text(CONFIG.format(db=db, url=url, interval=args.interval))
            result = run_set(config, replicas, args.seconds)
            result["requests"] = asyncio.run(sim_calls(url))
            results.append(result)
        finally:
            sim.terminate()
            sim.wait()
            if cleanup is not None:
                from benchmarks.history import drop

                asyncio.run(drop(cleanup))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
