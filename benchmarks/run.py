"""``python -m benchmarks.run --batches N --json OUT``: the simulator in its own process
with N active batches, and each contender (the watchdog engine, an openai-SDK loop, a
bare aiohttp GET loop) doing one full pass against a fresh copy of it, in a process of
its own; then the duration of a tick that finds nothing due among --idle tracked
batches. Prints a table and writes the figures as JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

CONTENDERS = ("watchdog", "openai", "aiohttp")


def start_simulator(n: int, mix: str = "mixed") -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.simserver", "--batches", str(n), "--mix", mix],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def contender(kind: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.contenders", kind, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_pass(kind: str, n: int, concurrency: int) -> dict[str, Any]:
    sim, url = start_simulator(n)
    try:
        return contender(kind, "--url", url, "--batches", str(n), "--concurrency", str(concurrency))
    finally:
        sim.terminate()
        sim.wait()


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as info:
        model = next(
            (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), ""
        )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("contender", "wall s", "polls/s", "CPU s/1000 polls", "peak RSS MB", "cancels")]
    for kind, r in results.items():
        rows.append(
            (
                kind,
                f"{r['wall_s']:.2f}",
                f"{r['polls_per_s']:.0f}",
                f"{r['cpu_s_per_1000_polls']:.3f}",
                f"{r['peak_rss_mb']:.0f}",
                str(r["cancels"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle", type=int, default=100_000, help="tracked batches, idle tick")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    args = parser.parse_args()
    results = {kind: run_pass(kind, args.batches, args.concurrency) for kind in args.only}
    idle = contender("idle", "--batches", str(args.idle))
    print(table(results))
    if "watchdog" in results:
        w = results["watchdog"]
        print(
            f"\nwatchdog: {w['rows_written']} rows written in {w['write_statements']} "
            f"statements per pass of {args.batches}; HTTP requests {w['http_requests']}; "
            f"idle tick {w['idle_tick_ms']} ms"
        )
    print(
        f"idle tick with {idle['tracked']} tracked batches: {idle['idle_tick_ms']} ms "
        f"(peak RSS {idle['peak_rss_mb']} MB)"
    )
    figures = {
        "batches": args.batches,
        "concurrency": args.concurrency,
        "machine": machine(),
        "contenders": results,
        "idle": idle,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
