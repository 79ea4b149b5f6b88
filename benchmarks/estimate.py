"""``python -m benchmarks.estimate --mb 200``: the real daemon (``batch-watchdog run
--once``) estimating one validating batch from an input file of that size, served by
the simulator in a process of its own, then cancelling it on that first tick. Prints the
file's size, how long the tick took, the read rate, and the daemon's peak RSS against a
run whose file is 1 MB: memory must not grow with the file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LINE = 4238  # bytes a line of the simulator's requests of 1,000 input tokens (about)
CONFIG = """\
database_url: sqlite+aiosqlite:///{db}
http: {{enabled: false}}
log_format: json
providers:
  sim: {{base_url: "{url}"}}
pricing:
  - {{model: "meta-llama/*", input: 0.03, output: 0.05}}
estimate: {{max_file_bytes: 250MB, wait: 10m, timeout: 10m}}
policies:
  - {{name: estimate-cap, when: {{estimated_cost_usd_above: 1}}, action: cancel}}
"""


def run_once(mb: float, tmp: Path) -> dict[str, Any]:
    """One daemon, one tick, one file of ``mb`` megabytes: its figures."""
    requests = max(int(mb * 1_000_000 / LINE), 1)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.simserver", "--batches", str(requests),
         "--mix", "estimate"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        config = tmp / f"w{mb:g}.yaml"
        config.write_text(CONFIG.format(db=tmp / f"w{mb:g}.db", url=url))
        cli = [sys.executable, "-m", "watchdog"]
        where = ["--config", str(config)]
        subprocess.run([*cli, "migrate", *where], check=True, capture_output=True)
        subprocess.run([*cli, "track", "batch_estimated", "--provider", "sim", *where],
                       check=True, capture_output=True)  # fmt: skip
        started = time.perf_counter()
        daemon = subprocess.Popen([*cli, "run", "--once", *where], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert daemon.stderr is not None
        log = daemon.stderr.read()
        _, status, usage = os.wait4(daemon.pid, 0)
        daemon.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    made = _event(log, "estimate_made")
    return {
        "file_mb": round(made.get("bytes", 0) / 1e6, 1),
        "requests": made.get("requests"),
        "cancelled_on_first_tick": _event(log, "cancel_succeeded") != {},
        "tick_s": round(wall, 2),  # the whole run --once: start, read, judge, cancel, stop
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": daemon.returncode,
    }


def _event(log: str, name: str) -> dict[str, Any]:
    for line in log.splitlines():
        if f'"event": "{name}"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=200.0, help="the input file's size")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        small = run_once(1.0, Path(tmp))
        large = run_once(args.mb, Path(tmp))
    extra_s = max(large["tick_s"] - small["tick_s"], 0.01)
    figures = {"small": small, "large": large,
               "read_mb_per_s": round((large["file_mb"] - small["file_mb"]) / extra_s, 1),
               "rss_growth_mb": round(large["peak_rss_mb"] - small["peak_rss_mb"], 1)}  # fmt: skip
    for name in ("small", "large"):
        f = figures[name]
        print(f"{name}: {f['file_mb']} MB, {f['requests']} requests, run --once {f['tick_s']} s, "
              f"peak RSS {f['peak_rss_mb']} MB, cancelled on its first tick (over the $1 "
              f"estimate cap): {f['cancelled_on_first_tick']}")  # fmt: skip
    print(
        f"read at {figures['read_mb_per_s']} MB/s (the larger run's extra time); peak RSS "
        f"grew {figures['rss_growth_mb']} MB for a file "
        f"{large['file_mb'] / max(small['file_mb'], 0.1):.0f} times larger"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
