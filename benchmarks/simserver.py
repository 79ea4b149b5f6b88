"""The simulator in a process of its own, preloaded with N active batches of which a
third break one of the benchmark's three policies. Prints its base URL, then serves."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from watchdog.sim.simulator import Simulator

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def populate(sim: Simulator, n: int) -> None:
    """Every batch is in progress; i % 9 == 0 costs over $5, i % 9 == 3 fails 40 % of
    its requests, i % 9 == 6 is slow and 40 minutes from expiry."""
    for i in range(n):
        kind = i % 9
        params: dict[str, object] = {
            "model": LLAMA,
            "total": 100_000,
            "rate": 1.0,
            "age": 3600.0,
            "input_tokens": 100,
            "output_tokens": 50,
        }
        if kind == 0:
            params |= {"input_tokens": 30_000, "output_tokens": 15_000}
        elif kind == 3:
            params |= {"failure_rate": 0.4}
        elif kind == 6:
            params |= {"age": 86_400 - 2_400, "rate": 0.1}
        sim.add(f"batch_{i:07d}", **params)  # type: ignore[arg-type]


def steady(sim: Simulator, n: int) -> None:
    """A day in production: 90 % of the batches unchanged between polls (stalled in a
    queue), 9 % progressing, 1 % over the $5 cap."""
    for i in range(n):
        kind = i % 100
        params: dict[str, object] = {
            "model": LLAMA,
            "total": 1_000_000,
            "rate": 0.0 if kind >= 10 else 2.0,
            "age": 3600.0,
            "input_tokens": 100,
            "output_tokens": 50,
        }
        if kind == 0:
            params |= {"input_tokens": 30_000, "output_tokens": 15_000, "rate": 1.0}
        sim.add(f"batch_{i:07d}", **params)  # type: ignore[arg-type]


def estimate(sim: Simulator, n: int) -> None:
    """One batch, still validating, whose input file holds ``n`` requests of 1,000
    input tokens (4.2 kB a line: 200 MB at n = 47,600), generated as it is read."""
    sim.add("batch_estimated", model=LLAMA, total=n, rate=10.0, validating_for=86_000,
            input_tokens=1000, max_tokens=1024, input_file="requests")  # fmt: skip


MIXES = {"mixed": populate, "steady": steady, "estimate": estimate}


async def serve(n: int, mix: str = "mixed") -> None:
    sim = Simulator()
    MIXES[mix](sim, n)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}/v1", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, required=True)
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    args = parser.parse_args()
    asyncio.run(serve(args.batches, args.mix))


if __name__ == "__main__":
    main()
