"""The benchmark harness still runs (a small smoke run; figures are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(module: str, *args: str) -> str:
    """``python -m benchmarks.MODULE ARGS`` from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    """A tiny run of two contenders writes the documented figures; the watchdog cancels
    exactly the simulated violators (every third batch)."""
    out = tmp_path / "bench.json"
    bench(
        "run",
        "--batches",
        "45",
        "--idle",
        "200",
        "--only",
        "watchdog",
        "aiohttp",
        "--json",
        str(out),
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


def test_overshoot_benchmark_smoke_run(tmp_path: Path) -> None:
    """A tiny accelerated run of the overshoot benchmark through the real tick loop
    cancels every batch and writes the documented figures."""
    out = tmp_path / "overshoot.json"
    overshoot = ["--batches", "4", "--speed", "600", "--timeout", "60"]
    bench("overshoot", *overshoot, "--cancel-latency", "2", "--usage-lag", "3", "--json", str(out))
    figures = json.loads(out.read_text())
    for mode in ("fixed", "adaptive"):
        assert figures[mode]["cancelled"] == figures[mode]["of"] == 4
        assert set(figures[mode]) >= {"median_pct", "p90_pct", "max_pct"}
    assert figures["params"]["cancel_latency"] == 2 and figures["params"]["usage_lag"] == 3


def test_steady_and_history_benchmarks_smoke_run(tmp_path: Path) -> None:
    """Tiny runs of the steady-state and the history benchmarks (SQLite; PostgreSQL is
    the same code with --database) print their documented figures."""
    out = tmp_path / "steady.json"
    bench("steady", "--batches", "200", "--passes", "1", "--json", str(out))
    steady = json.loads(out.read_text())
    assert steady["first_pass"]["polls"] == 200 and steady["first_pass"]["cancels"] == 2
    assert steady["passes"][0]["polls"] == 200  # the two cancelled still cancelling
    assert {"cpu_s_per_1000_polls", "rows_per_poll", "tick_s"} <= steady["passes"][0].keys()
    figures = json.loads(bench("history", "--finished", "500", "--events", "500"))
    assert figures["finished"] == 500 and figures["idle_tick_ms"]["median"] > 0
    assert figures["events_json"]["peak_rss_mb"] > 0


def test_account_benchmark_smoke_run() -> None:
    """The account-level benchmark's cheap parts run and print their figures (the page
    part runs a daemon for a minute: left to the real runs)."""
    out = bench("account", "--batches", "200", "--parts", "budget,discovery,replay")
    (figures,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert figures["batches"] == 200
    assert figures["budget"]["idle_tick_ms"] > 0 and figures["budget"]["with_budget_ms"] > 0
    assert figures["discovery"]["newest"]["per_interval"]["list"] > 0
    assert figures["replay"]["replay"]["wall_s"] > 0


def test_estimate_benchmark_smoke_run(tmp_path: Path) -> None:
    """A small run of the input-file benchmark: the real daemon reads both files and
    writes the documented figures (never asserted)."""
    out = tmp_path / "estimate.json"
    bench("estimate", "--mb", "3", "--json", str(out))
    figures = json.loads(out.read_text())
    for run in (figures["small"], figures["large"]):
        assert run["exit"] == 0 and run["requests"] and run["file_mb"]
        assert {"tick_s", "peak_rss_mb", "cancelled_on_first_tick"} <= run.keys()
    assert {"read_mb_per_s", "rss_growth_mb"} <= figures.keys()
