"""Several daemons on one PostgreSQL split the work with row leases: every violator is
cancelled exactly once, nothing is polled twice in a round, a killed replica's batches
come back, and terminated connections heal without a restart."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import table_rows
from tests.daemons import Daemon, write_config
from tests.databases import fresh_postgres, terminate_backends
from watchdog.sim.simulator import Simulator
from watchdog.storage.store import Store

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


@pytest.fixture
async def db_url() -> AsyncIterator[str]:
    """Several daemons on one database: PostgreSQL only (the conftest store migrates it)."""
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
async def real_sim(aiohttp_server: Any) -> tuple[Simulator, str]:
    sim = Simulator(api_key=None)
    server = await aiohttp_server(sim.app())
    return sim, str(server.make_url("/v1"))


async def populate(store: Store, sim: Simulator, total: int, violators: int) -> list[str]:
    """``total`` active batches; the first ``violators`` already cost over $5."""
    ids = []
    for i in range(total):
        expensive = i < violators
        batch = sim.add(
            f"batch_{i:05d}",
            model=LLAMA,
            total=2000,
            rate=1.0,
            age=1000,
            input_tokens=50_000 if expensive else 10,
            output_tokens=100_000 if expensive else 10,
        )
        batch.rate = 1000 / (sim.clock() - batch.run_start)
        ids.append(batch.id)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO batches (provider, batch_id) VALUES ('sim', :id)"),
            [{"id": i} for i in ids],
        )
    return ids


def gets_by_batch(sim: Simulator, host: str | None = None) -> dict[str, list[float]]:
    """When each batch was polled (only by clients that named ``host``, if given)."""
    times: dict[str, list[float]] = defaultdict(list)
    for at, kind, batch_id, asked in sim.log:
        if kind == "get" and host in (None, asked):
            times[batch_id].append(at)
    return times


async def test_three_replicas_cancel_each_violator_once(
    tmp_path: Path, db_url: str, store: Store, real_sim: tuple[Simulator, str]
) -> None:
    """3 daemons, 1,000 batches, 100 over the cap: 100 cancels, one each, none else;
    no batch polled twice within a round."""
    sim, url = real_sim
    ids = await populate(store, sim, 1000, 100)
    config = write_config(tmp_path / "w.yaml", db_url=db_url, sim_url=url)
    daemons = [await Daemon.start(config) for _ in range(3)]
    try:
        for daemon in daemons:
            await daemon.wait_for(lambda d=daemon: len(d.ticks()) >= 3, timeout=60)
    finally:
        codes = [await d.stop() for d in daemons]
    assert codes == [0, 0, 0]
    cancels = {i: sim.calls.get(i, {}).get("cancel", 0) for i in ids}
    assert all(cancels[i] == 1 for i in ids[:100]), [i for i in ids[:100] if cancels[i] != 1]
    assert not any(cancels[i] for i in ids[100:])
    claimed = [sum(t["claimed"] for t in d.ticks()) for d in daemons]
    assert sum(1 for c in claimed if c) >= 2, claimed  # the work was shared
    # Counted, not timed: every GET follows a claim of this very batch (a transport
    # retry aside), and no batch was polled more often than one replica ticked (each
    # ticks, early if need be, whenever batches fall due) — three replicas each polling
    # it in a round would triple that.
    gets = gets_by_batch(sim)
    polls = sum(len(times) for times in gets.values())
    assert polls <= sum(claimed) * 1.01, (polls, sum(claimed))
    rounds = max(len(d.ticks()) for d in daemons) + 2
    assert max(len(times) for times in gets.values()) <= rounds, rounds


async def test_killed_replica_batches_are_taken_over(
    tmp_path: Path, db_url: str, store: Store, real_sim: tuple[Simulator, str]
) -> None:
    """A replica SIGKILLed mid-tick leaves its leases to expire; the others poll its
    batches once the lease has run out (never before: the lease is honoured). Told
    apart by what was leased when, and by which Host asked: no timing assumed."""
    sim, url = real_sim
    await populate(store, sim, 200, 0)
    lease = 12.0  # long enough for the others to start and tick while it holds

    def config_for(name: str, host: str) -> Path:
        # The first replica asks by another host name: the simulator tells its requests
        # (some may be served after it died) from the others'.
        config = write_config(tmp_path / name, db_url=db_url, extra=f"lease_duration: {lease}s\n",
                              sim_url=url.replace("127.0.0.1", host))  # fmt: skip
        config.write_text(config.read_text().replace(
            "api_key_env: SIM_TOKEN", "api_key_env: SIM_TOKEN\n    concurrency: 4"))  # fmt: skip
        return config

    survivors = url.split("/")[2]  # 127.0.0.1:PORT, the Host the others send
    sim.latency = 2.0  # a slow provider: the first replica's tick would take ~100 s
    first = await Daemon.start(config_for("first.yaml", "localhost"))
    expiry: dict[str, float] = {}  # batch -> when the first replica's lease on it ends
    async with asyncio.timeout(90):
        while len(expiry) <= 150:  # its one claim of nearly everything
            expiry = await leased_to(store, first.proc.pid)
            await asyncio.sleep(0.05)
    await first.kill()  # mid-tick: it claimed, it will never renew or give them back
    sim.latency = 0.0
    held = set(expiry)
    others = [await Daemon.start(config_for("w.yaml", "127.0.0.1")) for _ in range(2)]
    try:
        await others[0].wait_for(lambda: held <= set(gets_by_batch(sim, survivors)), 180)
    finally:
        for daemon in others:
            assert await daemon.stop() == 0
    polled = gets_by_batch(sim, survivors)
    early = [b for b in held if min(polled[b]) < expiry[b]]
    assert early == [], early  # nobody took a batch whose lease still held


async def leased_to(store: Store, pid: int | None) -> dict[str, float]:
    """The batches leased to this process, each with when its lease ends (one read)."""
    rows = await table_rows(store)
    mine = [r for r in rows if (r["lease_owner"] or "").endswith(f":{pid}")]
    return {r["batch_id"]: r["lease_expires_at"].timestamp() for r in mine}


async def test_terminated_connections_heal_without_restart(
    tmp_path: Path, db_url: str, store: Store, real_sim: tuple[Simulator, str]
) -> None:
    """pg_terminate_backend on every connection of the daemon: it logs, recovers and goes
    on polling, without a restart."""
    sim, url = real_sim
    await populate(store, sim, 20, 0)
    config = write_config(tmp_path / "w.yaml", db_url=db_url, sim_url=url)
    config.write_text(config.read_text().replace("poll_interval: 2s", "poll_interval: 1s"))
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 2, timeout=60)
        name = make_url(db_url).database
        for _ in range(3):  # kill them a few times, including mid-tick
            await terminate_backends(name)
            await asyncio.sleep(0.4)
        before = len(daemon.ticks())
        await daemon.wait_for(
            lambda: sum(t["polled"] for t in daemon.ticks()[before:]) >= 20, timeout=60
        )
        assert daemon.proc.returncode is None
    finally:
        assert await daemon.stop() == 0
