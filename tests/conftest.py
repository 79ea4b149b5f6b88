"""Shared fixtures: an injectable clock, the simulator on a real aiohttp server, a
migrated SQLite file per test, and a harness that runs real ticks against both."""

from __future__ import annotations

import gc
import json
import secrets
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from tests.databases import fresh_postgres
from watchdog.core.cadence import Cadence
from watchdog.daemon import logs
from watchdog.daemon.engine import Engine
from watchdog.daemon.summary import TickSummary
from watchdog.providers.client import ProviderClient
from watchdog.settings import Settings
from watchdog.sim.simulator import Simulator
from watchdog.storage.database import create_engine, upgrade
from watchdog.storage.store import Store
from watchdog.storage.tables import batches

# A fresh fake key per run: tests grep every output channel for it.
API_KEY = "sk-test-" + secrets.token_hex(16)
DATA = Path(__file__).parent / "data" / "batches"
T0 = 1_764_320_400.0  # 2025-11-28 09:00:00 UTC


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def time(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """No test inherits another's logging setup (a CLI test in-process configures it)."""
    yield
    logs.reset()


@pytest.fixture(autouse=True)
def closes_what_it_opens() -> Iterator[None]:
    """A test that leaves a connection, an engine's pool, a session or a file open fails
    itself: what it dropped is collected here, at its own teardown (the last), and any
    ResourceWarning that raises is its failure — not a later, unrelated test's."""
    # Whatever lives now is not this test's: frozen, it is neither blamed on it nor
    # scanned again (a full collection of a worker that imported the SDKs takes 0.25 s).
    gc.freeze()
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = sorted({str(w.message).split(" at 0x")[0][:200] for w in caught
                     if issubclass(w.category, ResourceWarning)})  # fmt: skip
    if leaked:
        pytest.fail(f"left open: {'; '.join(leaked)}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class Sim:
    simulator: Simulator
    url: str

    def calls(self, batch_id: str, kind: str) -> int:
        return self.simulator.calls.get(batch_id, {}).get(kind, 0)


@pytest.fixture
async def sim(clock: Clock, aiohttp_server: Any) -> Sim:
    simulator = Simulator(clock=clock.time, api_key=API_KEY)
    server = await aiohttp_server(simulator.app())
    return Sim(simulator, str(server.make_url("/v1")))


async def database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'watchdog.db'}"
        return
    async with fresh_postgres(kind) as url:
        yield url


# For a test of the engine's judgement, not of the database: SQLite alone.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "psycopg"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The store, engine and CLI suites run on both backends through this one fixture."""
    async for url in database(request.param, tmp_path):
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = create_engine(db_url)
    await upgrade(engine)
    yield Store(engine)
    await engine.dispose()


LLAMA_PRICE = {"model": "meta-llama/*", "input": 0.03, "output": 0.05}
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
# A simulated batch over a $5 cap when first polled: 3,000 requests a second for 30 s
# at $0.00011 a request (LLAMA_PRICE) = $9.90 spent, $22 projected.
SPENDER: dict[str, Any] = {"model": LLAMA, "age": 30, "total": 200_000, "rate": 3000,
                           "input_tokens": 2000, "output_tokens": 1000}  # fmt: skip


@dataclass
class Harness:
    """Real ticks: the engine, the simulator over HTTP and a SQLite file."""

    sim: Sim
    store: Store
    clock: Clock
    client: ProviderClient
    settings: Settings | None = None
    engine: Engine | None = None
    summaries: list[TickSummary] = field(default_factory=list)

    def configure(
        self,
        *,
        policies: list[dict[str, Any]],
        pricing: list[dict[str, Any]] | None = None,
        dry_run: bool = False,
        poll_interval: str = "60s",
        discover: Any = None,
        **extra: Any,
    ) -> None:
        self.settings = Settings(
            providers={"sim": {"base_url": self.sim.url, "discover": discover}},
            pricing=[LLAMA_PRICE] if pricing is None else pricing,
            policies=policies,
            dry_run=dry_run,
            poll_interval=poll_interval,
            **extra,
        )
        self.engine = Engine(
            store=self.store,
            clients={"sim": self.client},
            rules=self.settings.rules(),
            cadence=Cadence(self.settings.poll_interval),
            owner="test",
            clock=self.clock.now,
        )

    async def track(self, *batch_ids: str) -> None:
        for batch_id in batch_ids:
            await self.store.tracking.track("sim", batch_id, {}, self.clock.now())

    async def tick(self, advance: float = 0.0) -> TickSummary:
        self.clock.advance(advance)
        assert self.engine is not None, "configure() first"
        summary = await self.engine.tick()
        self.summaries.append(summary)
        return summary

    async def row(self, batch_id: str) -> dict[str, Any]:
        rows = [r for r in await table_rows(self.store) if r["batch_id"] == batch_id]
        assert rows, f"{batch_id} not tracked"
        return rows[0]

    async def row_or_none(self, batch_id: str) -> dict[str, Any] | None:
        rows = [r for r in await table_rows(self.store) if r["batch_id"] == batch_id]
        return rows[0] if rows else None

    async def kinds(self, batch_id: str) -> list[str]:
        return [e["kind"] for e in await self.store.journal.list_events(batch_id)]


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture
async def harness(sim: Sim, store: Store, clock: Clock) -> AsyncIterator[Harness]:
    client = ProviderClient(
        "sim", base_url=sim.url, api_key=SecretStr(API_KEY), timeout=5, sleep=_no_sleep
    )
    async with client:
        yield Harness(sim, store, clock, client)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


async def table_rows(store: Store) -> list[dict[str, Any]]:
    """Every row of ``batches`` as the database holds it, every column (what a test
    checks; the daemon's reads return typed rows)."""
    c = batches.c
    query = select(batches).order_by(c.tracked_at, c.provider, c.batch_id)
    async with store.engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(query)).mappings()]
