"""``simulate`` and ``demo``: the simulator served on its own, or with the daemon
running against it on a temporary SQLite file, so a newcomer sees batches judged
and cancelled within a minute."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from watchdog import app
from watchdog.clock import utcnow
from watchdog.core.models import TERMINAL
from watchdog.core.rows import Listed
from watchdog.daemon import logs
from watchdog.daemon.scheduler import TickLoop, stopped
from watchdog.settings import ConfigError, load_settings
from watchdog.sim.simulator import Simulator

log = structlog.get_logger("watchdog.demo")
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


# The demo's batches, each showing one behaviour: (id, the simulator's parameters).
DEMO_BATCHES: tuple[tuple[str, dict[str, Any]], ...] = (
    # Expensive: an alert on its projected cost first, then cancelled by cost-cap at $5.
    ("batch_research_eval", {"model": LLAMA, "metadata": {"team": "research"},
                             "total": 200_000, "rate": 3000, "input_tokens": 2000,
                             "output_tokens": 1000}),
    # Healthy and cheap: runs to completion, never touched; its input file's estimate
    # ($0.18 to $1.10) and how far it was are in the audit event of its end.
    ("batch_nightly_summaries", {"model": "gpt-4o-mini-2024-07-18", "total": 3000,
                                 "rate": 150, "input_tokens": 800, "cached_tokens": 400,
                                 "output_tokens": 200, "input_file": "requests"}),
    # Still validating, and its input file asks for up to $6.19 (5,000 requests of 500
    # tokens, each allowed 4,000 output tokens): cancelled by estimate-cap before it
    # spent a cent.
    ("batch_oversized_translation", {"model": "gpt-4o-mini-2024-07-18", "total": 5000,
                                     "validating_for": 3600, "input_tokens": 500,
                                     "max_tokens": 4000, "input_file": "requests"}),
    # 35 % of requests fail: cancelled by the failure-ratio policy.
    ("batch_flaky_extraction", {"model": LLAMA, "total": 5000, "rate": 40,
                                "failure_rate": 0.35}),
    # 40 minutes from expiry at 30 %: cancelled by expiring-slow.
    ("batch_late_backfill", {"model": LLAMA, "age": 84_000, "total": 10_000,
                             "rate": 3000 / 84_000}),
    # An older server: no usage and no model, so cost is unknown (never zero).
    ("batch_legacy_no_usage", {"model": None, "with_usage": False, "total": 600, "rate": 20}),
    # A model with no price: pricing_missing is logged once.
    ("batch_mystery_model", {"model": "acme/unpriced-7b", "total": 1000, "rate": 50}),
    # Over the cost cap too, but its owner opted out (metadata watchdog=off): judged,
    # recorded, never cancelled.
    ("batch_exempt_vip", {"model": LLAMA, "metadata": {"watchdog": "off"}, "total": 30_000,
                          "rate": 3000, "input_tokens": 5000, "output_tokens": 2000}),
    # Finished yesterday: tracked, seen as completed, never polled again.
    ("batch_finished_yesterday", {"model": LLAMA, "age": 90_000, "total": 100, "rate": 10}),
)  # fmt: skip
# Submitted from a notebook and never registered: discovery finds it on the first
# tick's list pass, and it runs to completion like any healthy batch.
UNREGISTERED = ("batch_notebook_sweep", {"model": LLAMA, "metadata": {"team": "research"},
                                         "total": 4000, "rate": 200, "input_tokens": 1500,
                                         "output_tokens": 500})  # fmt: skip


def demo_scenario(sim: Simulator) -> list[str]:
    """The demo's batches on the simulator; returns the ids to track (one more is left
    for discovery to find)."""
    for batch_id, params in (*DEMO_BATCHES, UNREGISTERED):
        sim.add(batch_id, **params)
    return [batch_id for batch_id, _ in DEMO_BATCHES]


async def _start(sim: Simulator, host: str, port: int) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}{sim.base_path}"


async def serve_simulator(host: str, port: int, scenario: str, api: str = "openai") -> None:
    """Serve until SIGINT or SIGTERM, in the dialect of the ``api`` kind."""
    logs.configure()
    sim = Simulator(api=api)
    ids = demo_scenario(sim) if scenario == "demo" else []
    runner, url = await _start(sim, host, port)
    log.info("simulator_listening", base_url=url, batches=ids)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def demo_config() -> Path:
    """config/demo.yaml, as shipped inside the package."""
    return Path(str(files("watchdog.config").joinpath("demo.yaml")))


def run_demo(config: str | None, duration: float) -> list[Listed]:
    """Run the demo; the final state of the batches, for the CLI to print."""
    return asyncio.run(_demo(Path(config) if config else demo_config(), duration))


async def _demo(config: Path, duration: float) -> list[Listed]:
    if not config.is_file():
        raise ConfigError(f"{config}: demo config not found")
    sim = Simulator()
    runner, url = await _start(sim, "127.0.0.1", 0)
    try:
        with tempfile.TemporaryDirectory(prefix="batch-watchdog-demo-") as tmp:
            overrides = {
                "database_url": f"sqlite+aiosqlite:///{tmp}/demo.db",
                "providers": {"sim": {"base_url": url}},
            }
            settings = load_settings(config, overrides=overrides)
            redact = logs.configure(settings.log_level, settings.log_format)
            log.info("demo_started", simulator=url, database=f"{tmp}/demo.db", seconds=duration)
            return await _demo_daemon(settings, sim, duration, redact)
    finally:
        await runner.cleanup()


async def _demo_daemon(
    settings: Any, sim: Simulator, duration: float, redact: logs.Redactor
) -> list[Listed]:
    async with app.open_daemon(settings, redact=redact) as daemon:
        for batch_id in demo_scenario(sim):
            await daemon.store.tracking.track("sim", batch_id, {"source": "demo"}, utcnow())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(_until_settled(daemon.store, stop, duration))
        loop_ = TickLoop(
            daemon.engine.tick,
            daemon.engine.cadence,
            next_due=daemon.engine.next_due,
        )
        await loop_.run(stop)
        await stopped(watcher)
        return await daemon.store.reads.list_batches()


async def _until_settled(store: Any, stop: asyncio.Event, duration: float) -> None:
    """Stop when every batch is terminal, or when the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while loop.time() < deadline:
        await asyncio.sleep(1)
        rows = await store.reads.list_batches()
        if rows and all(r.tracked.view.status in TERMINAL for r in rows):
            break
    stop.set()
