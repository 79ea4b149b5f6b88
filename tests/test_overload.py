"""Correct under load and on odd wire data (issue 10): a tick is bounded by what was due
when it started, a bulk-refresh answer is used once, an early tick planned from inside a
tick is not dropped, and a value no column or clock can hold fails one batch only."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from structlog.testing import capture_logs

from tests.conftest import SQLITE_ONLY, Harness, Sim
from tests.daemons import Daemon
from tests.test_service import endpoint, http_port
from watchdog.core.cadence import Cadence
from watchdog.daemon.scheduler import TickLoop
from watchdog.sim.simulator import Fault
from watchdog.storage.database import create_engine, upgrade
from watchdog.storage.tables import batches

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
COST_CAP = [{"name": "cost-cap", "when": {"cost_usd_above": 5}, "action": "cancel"}]


def racing(h: Harness, step: float) -> None:
    """Time that runs on by ``step`` seconds at every reading: a daemon far slower than
    its poll interval."""
    assert h.engine is not None

    def now() -> datetime:
        h.clock.advance(step)
        return h.clock.now()

    h.engine.clock = now


@SQLITE_ONLY
async def test_a_tick_polls_what_was_due_when_it_started(harness: Harness) -> None:
    """35 batches in chunks of 10 while the clock runs far past the 10 s interval: each
    batch is polled once, the tick ends, and the backlog is reported (a warning, a
    ``backlog`` event, the metric)."""
    h = harness
    h.configure(policies=COST_CAP, poll_interval="10s")
    assert h.engine is not None
    h.engine.chunk = 10
    ids = [f"batch_{i:02d}" for i in range(35)]
    for batch_id in ids:
        h.sim.simulator.add(batch_id, model=LLAMA, total=100, rate=0)
    await h.track(*ids)
    racing(h, 4.0)
    with capture_logs() as logs:
        summary = await asyncio.wait_for(h.engine.tick(), timeout=30)
    assert summary.claimed == 35 and summary.polled == 35
    assert all(h.sim.calls(i, "get") == 1 for i in ids)
    assert summary.backlog > 0
    warnings = [e for e in logs if e["event"] == "backlog"]
    assert len(warnings) == 1 and warnings[0]["due"] == summary.backlog
    assert h.engine.metrics.backlog.collect()[0].samples[0].value == summary.backlog
    events = [e for e in await h.store.journal.list_events() if e["kind"] == "backlog"]
    assert len(events) == 1 and events[0]["detail"]["due"] == summary.backlog
    # Still behind on the next tick: warned again, but the event is not repeated.
    with capture_logs() as logs:
        await h.engine.tick()
    assert [e["event"] for e in logs].count("backlog") == 1
    assert [e["kind"] for e in await h.store.journal.list_events()].count("backlog") == 1


@SQLITE_ONLY
async def test_bulk_answers_are_used_once_under_load(harness: Harness) -> None:
    """With the bulk refresh on and a tick slower than the interval, a batch cancelled
    early in the tick is never 'polled' again from the list answer read at its start:
    no status goes back from cancelling to in_progress, no cancel is settled from it."""
    h = harness
    h.configure(policies=COST_CAP, poll_interval="10s")
    assert h.engine is not None
    h.engine.chunk, h.engine.refresher.bulk_threshold = 20, 20
    ids = [f"batch_{i:02d}" for i in range(60)]
    for i, batch_id in enumerate(ids):  # every third one is over the $5 cap: $0.04 each
        tokens = 1_000_000 if i % 3 == 0 else 1_000
        h.sim.simulator.add(
            batch_id,
            model=LLAMA,
            total=10_000,
            rate=1,
            age=300 + i,
            input_tokens=tokens,
            output_tokens=tokens // 5,
        )
    await h.track(*ids)
    racing(h, 3.0)
    await asyncio.wait_for(h.engine.tick(), timeout=30)
    events = await h.store.journal.list_events()
    backwards = [
        e for e in events if e["kind"] == "status_changed" and e["from_status"] == "cancelling"
    ]
    assert backwards == []
    assert all(h.sim.calls(i, "cancel") == (1 if n % 3 == 0 else 0) for n, i in enumerate(ids))
    assert [e["kind"] for e in events].count("cancel_requested") == 20


async def test_an_early_tick_planned_inside_an_early_tick_runs() -> None:
    """Batches already due when a tick ends get a tick of their own soon, also when that
    tick was itself an early one (a fixed job id made APScheduler refuse it)."""
    stop = asyncio.Event()
    started: list[datetime] = []

    async def tick() -> None:
        started.append(datetime.now(UTC))
        if len(started) == 4:
            stop.set()

    async def next_due() -> datetime:
        return datetime.now(UTC) - timedelta(seconds=1)  # a backlog: due already

    loop = TickLoop(tick, Cadence(timedelta(seconds=60)), next_due=next_due)
    await asyncio.wait_for(loop.run(stop), timeout=60)
    assert len(started) == 4
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(started)]
    # A lower bound only: a loaded machine makes gaps longer, never shorter.
    assert all(gap >= 0.2 for gap in gaps), gaps  # never closer than the minimum gap


def answer(h: Harness, batch_id: str, **change: Any) -> None:
    """The next GET of this batch answers its simulated state with ``change`` applied."""
    body = h.sim.simulator.batches[batch_id].wire(h.clock.time()) | change
    h.sim.simulator.faults.append(
        Fault("GET", f"/batches/{batch_id}", 200, body=json.dumps(body), times=100)
    )


async def test_values_no_column_or_clock_holds_fail_one_batch(harness: Harness) -> None:
    """Milliseconds for seconds, a count of 2**63, a 1e400, a status too long for its
    column: each fails its own poll (``poll_failed``, reason given); the healthy batch in
    the same tick is recorded and judged; the tick and the next one complete."""
    h = harness
    h.configure(policies=COST_CAP)
    ids = ["batch_ok", "batch_ms", "batch_huge", "batch_inf", "batch_status"]
    for batch_id in ids:
        h.sim.simulator.add(batch_id, model=LLAMA, total=100, rate=0)
    answer(h, "batch_ms", expires_at=1_764_406_800_000)
    answer(h, "batch_huge", request_counts={"total": 2**63, "completed": 0, "failed": 0})
    answer(h, "batch_status", status="x" * 200)
    body = json.dumps(h.sim.simulator.batches["batch_inf"].wire(h.clock.time()))
    h.sim.simulator.faults.append(
        Fault("GET", "/batches/batch_inf", 200, body=body.replace('"total": 100', '"total": 1e400'))
    )
    await h.track(*ids)
    summary = await h.tick()
    assert summary.polled == 1 and summary.poll_failed == 4
    assert (await h.row("batch_ok"))["status"] == "in_progress"
    errors = {i: (await h.row(i))["last_error"] for i in ids[1:]}
    assert "milliseconds" in errors["batch_ms"]
    assert "out of range" in errors["batch_huge"]
    assert "finite" in errors["batch_inf"]
    assert "longer than 64" in errors["batch_status"]
    assert (await h.tick(advance=60)).polled == 2  # batch_inf's fault was a one-off


@SQLITE_ONLY
async def test_a_bad_list_item_costs_only_its_own_batch(harness: Harness) -> None:
    """One item of a list page with a time no clock holds: the other 149 are still read
    from the pages; that one gets its own GET (and fails it alone)."""
    h = harness
    h.configure(policies=COST_CAP)
    assert h.engine is not None
    h.engine.refresher.bulk_threshold = 100
    ids = [f"batch_{i:03d}" for i in range(150)]
    for i, batch_id in enumerate(ids):
        h.sim.simulator.add(batch_id, total=10, rate=0, age=1000 + i)
    h.sim.simulator.batches["batch_070"].window = 1e13  # expires_at far past 2100
    await h.track(*ids)
    summary = await h.tick()
    assert summary.polled == 149 and summary.poll_failed == 1
    assert sum(h.sim.calls(i, "get") for i in ids) == 1
    assert h.sim.calls("batch_070", "get") == 1
    assert "not a Unix time" in (await h.row("batch_070"))["last_error"]


async def test_the_daemon_under_sustained_overload(tmp_path: Path, sim: Sim) -> None:
    """`batch-watchdog run` with 3,000 batches at `poll_interval: 1s` on this machine:
    every tick ends (tick_completed keeps coming), /healthz answers 200 at every probe,
    the backlog is said (a warning and the metric), and no tick polls a batch twice."""
    ids = [f"batch_{i:05d}" for i in range(3000)]
    for batch_id in ids:
        sim.simulator.add(batch_id, model=LLAMA, total=100, rate=0)
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    engine = create_engine(db)
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(insert(batches), [{"provider": "sim", "batch_id": i} for i in ids])
    await engine.dispose()
    config = tmp_path / "w.yaml"
    config.write_text(f"""
database_url: {db}
poll_interval: 1s
log_format: json
http: {{port: 0}}
bulk_refresh_at: 0
providers: {{sim: {{base_url: "{sim.url}", api_key_env: SIM_TOKEN}}}}
pricing: [{{model: "meta-llama/*", input: 0.03, output: 0.05}}]
policies: [{{name: cost-cap, when: {{cost_usd_above: 5}}, action: cancel}}]
""")
    daemon = await Daemon.start(config)
    probes: list[int] = []
    try:
        await daemon.wait_for(
            lambda: any(e.get("event") == "http_listening" for e in daemon.events)
        )
        port = http_port(daemon)
        async with asyncio.timeout(90):
            while len(daemon.ticks()) < 4:
                probes.append((await endpoint(port, "/healthz"))[0])
                await asyncio.sleep(0.25)
        metrics = (await endpoint(port, "/metrics"))[1]
    finally:
        assert await daemon.stop() == 0
    ticks = daemon.ticks()
    assert probes and set(probes) == {200}, probes
    assert any(e.get("event") == "backlog" for e in daemon.events)
    assert "watchdog_backlog_batches" in metrics and "watchdog_backlog_age_seconds" in metrics
    assert all(t["claimed"] <= len(ids) for t in ticks), [t["claimed"] for t in ticks]
    assert max(sim.calls(i, "get") for i in ids) <= len(ticks) + 1
