"""The benchmark harness still runs (a small smoke run; figures are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    """A tiny run of two contenders writes the documented figures; the watchdog cancels
    exactly the simulated violators (every third batch)."""
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--batches",
            "45",
            "--idle",
            "200",
            "--only",
            "watchdog",
            "aiohttp",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = json.loads(out.read_text())
    watchdog = figures["contenders"]["watchdog"]
    assert watchdog["polls"] == 45 and watchdog["cancels"] == 15
    for key in (
        "wall_s",
        "polls_per_s",
        "cpu_s_per_1000_polls",
        "peak_rss_mb",
        "rows_written",
        "idle_tick_ms",
    ):
        assert key in watchdog
    assert figures["contenders"]["aiohttp"]["polls"] == 45
    assert figures["idle"]["tracked"] == 200 and figures["machine"]["cores"]
