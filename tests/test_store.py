"""The store and its migrations on a real SQLite file: schema at head, models and
migrations agree, tracking, leases and the external-insert contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from tests.conftest import database, table_rows
from watchdog.core.models import BatchObject
from watchdog.core.rows import Change
from watchdog.storage.database import _alembic_config, create_engine, schema_revision, upgrade
from watchdog.storage.store import Store
from watchdog.storage.tables import metadata

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def wire(batch_id: str, status: str) -> BatchObject:
    return BatchObject(id=batch_id, status=status)


@pytest.fixture(params=["sqlite", "psycopg", "asyncpg"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The store's own tests also prove the asyncpg driver."""
    async for url in database(request.param, tmp_path):
        yield url


LEASE = timedelta(minutes=5)
HEAD = "0009"


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    """Migrations go to head, back to base and to head again."""
    from alembic import command

    engine = create_engine(db_url)
    config = _alembic_config()

    def run(connection: Connection, target: str, up: bool) -> None:
        config.attributes["connection"] = connection
        (command.upgrade if up else command.downgrade)(config, target)

    try:
        await upgrade(engine)
        assert await schema_revision(engine) == (HEAD, HEAD)
        async with engine.begin() as conn:
            await conn.run_sync(run, "base", False)
        assert (await schema_revision(engine))[0] is None
        async with engine.begin() as conn:
            await conn.run_sync(run, "head", True)
        assert await schema_revision(engine) == (HEAD, HEAD)
    finally:
        await engine.dispose()


async def test_money_is_exact_and_survives_the_migration(db_url: str) -> None:
    """A float cost written before 0003 reads back as the same decimal after it; new
    amounts are stored exactly to 12 places (a token costs fractions of a micro-dollar),
    never through a float."""
    from alembic import command
    from sqlalchemy import text

    engine = create_engine(db_url)

    def to(connection: Connection, target: str) -> None:
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, target)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(to, "0002")
            await conn.execute(
                text(
                    "INSERT INTO batches (provider, batch_id, cost_usd, cancel_projected_usd,"
                    " poll_failures, cancel_attempts) VALUES ('p', 'old', 6.5, 0.25, 0, 0)"
                )
            )
        await upgrade(engine)
        store = Store(engine)
        exact = Decimal("12345678901.000000000015")
        await store.tracking.track("p", "new", {}, NOW)
        await store.claims.apply([Change("p", "new", cost_usd=exact)], [])
        rows = {r["batch_id"]: r for r in await table_rows(store)}
        assert rows["old"]["cost_usd"] == Decimal("6.5")
        assert rows["old"]["cancel_projected_usd"] == Decimal("0.25")
        assert rows["new"]["cost_usd"] == exact and isinstance(rows["new"]["cost_usd"], Decimal)
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(store: Store) -> None:
    """An autogenerate diff between tables.py and the migrated database is empty."""

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


@pytest.mark.parametrize("db_url", ["psycopg"], indirect=True)
async def test_batches_leave_room_for_hot_updates(store: Store) -> None:
    """PostgreSQL keeps half of each batches page free, so a poll's lease claim can be a
    HOT update on the row's own page (migration 0005)."""
    from sqlalchemy import text

    query = text("SELECT reloptions FROM pg_class WHERE relname = 'batches'")
    async with store.engine.connect() as conn:
        assert (await conn.execute(query)).scalar_one() == ["fillfactor=50"]


async def test_new_sqlite_file_is_private(tmp_path: object) -> None:
    """A database file the daemon creates is readable by its owner only (0600)."""
    import os
    from pathlib import Path

    path = Path(str(tmp_path)) / "sub" / "new.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await upgrade(engine)
    await engine.dispose()
    assert os.stat(path).st_mode & 0o777 == 0o600


async def test_track_is_idempotent_and_recorded(store: Store) -> None:
    """Tracking twice adds one row and one 'tracked' event, with labels kept."""
    assert await store.tracking.track("p", "b1", {"team": "ml"}, NOW)
    assert not await store.tracking.track("p", "b1", {}, NOW)
    rows = await table_rows(store)
    assert [(r["batch_id"], r["labels"]) for r in rows] == [("b1", {"team": "ml"})]
    assert [e["kind"] for e in await store.journal.list_events("b1")] == ["tracked"]


async def test_untrack_keeps_history(store: Store) -> None:
    """Untracking removes the row, keeps its events and adds 'untracked'."""
    await store.tracking.track("p", "b1", {}, NOW)
    await store.tracking.track("q", "b1", {}, NOW)
    assert await store.tracking.untrack("b1", "p", NOW) == ["p"]
    assert [r["provider"] for r in await table_rows(store)] == ["q"]
    kinds = [(e["provider"], e["kind"]) for e in await store.journal.list_events("b1")]
    assert kinds == [("p", "tracked"), ("q", "tracked"), ("p", "untracked")]
    assert await store.tracking.untrack("b1", None, NOW) == ["q"]
    assert await store.tracking.untrack("b1", None, NOW) == []


async def test_claim_leases_each_due_batch_once(store: Store) -> None:
    """A claimed batch is not claimed again until its lease expires or is released."""
    for i in range(5):
        await store.tracking.track("p", f"b{i}", {}, NOW)
    first = await store.claims.claim_due(NOW, "me", LEASE, 3)
    second = await store.claims.claim_due(NOW, "other", LEASE, 10)
    assert len(first) == 3 and len(second) == 2
    assert {t.key for t in first}.isdisjoint({t.key for t in second})
    assert await store.claims.claim_due(NOW, "third", LEASE, 10) == []
    later = await store.claims.claim_due(NOW + LEASE + timedelta(seconds=1), "third", LEASE, 10)
    assert len(later) == 5
    await store.claims.release("third")
    assert len(await store.claims.claim_due(NOW + LEASE * 2, "x", LEASE, 10)) == 5


async def test_claim_skips_not_yet_due_and_terminal(store: Store) -> None:
    """Only rows whose next_poll_at has come and whose status is not terminal are due."""
    for name in ("due", "later", "done"):
        await store.tracking.track("p", name, {}, NOW)
    await store.claims.apply(
        [
            Change("p", "later", next_poll_at=NOW + timedelta(minutes=1)),
            Change("p", "done", wire=wire("done", "completed")),
        ],
        [],
    )
    assert [t.view.batch_id for t in await store.claims.claim_due(NOW, "me", LEASE, 10)] == ["due"]


async def test_times_round_trip_as_aware_utc(store: Store) -> None:
    """SQLite would drop offsets; the store gives back aware UTC datetimes."""
    from zoneinfo import ZoneInfo

    await store.tracking.track("p", "b", {}, NOW)
    berlin = datetime(2026, 11, 28, 13, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    await store.claims.apply([Change("p", "b", cancel_requested_at=berlin)], [])
    row = (await table_rows(store))[0]
    assert row["cancel_requested_at"] == NOW and row["cancel_requested_at"].tzinfo == UTC


async def test_lost_lease_fences_the_write(store: Store) -> None:
    """A replica whose lease ran out (and was taken over) writes nothing, events included."""
    from watchdog.core.events import Event, Kind

    await store.tracking.track("p", "b1", {}, NOW)
    assert len(await store.claims.claim_due(NOW, "slow", LEASE, 10)) == 1
    later = NOW + LEASE + timedelta(seconds=1)
    assert len(await store.claims.claim_due(later, "fast", LEASE, 10)) == 1
    late = [Change("p", "b1", wire=wire("b1", "cancelling"), cancel_policy="x")]
    event = Event(later, "p", "b1", Kind.CANCEL_REQUESTED, policy="x")
    assert await store.claims.apply(late, [event], owner="slow") == set()
    row = (await table_rows(store))[0]
    assert row["status"] is None and row["cancel_policy"] is None
    assert [e["kind"] for e in await store.journal.list_events("b1")] == ["tracked"]
    fresh = [Change("p", "b1", wire=wire("b1", "in_progress"))]
    assert await store.claims.apply(fresh, [], owner="fast") == {("p", "b1")}


async def test_concurrent_trackers_of_one_id(store: Store) -> None:
    """Ten trackers of the same batch at once: one adds it, the others are told it is
    tracked already; one row, one `tracked` event, no error."""
    import asyncio

    added = await asyncio.gather(
        *(store.tracking.track("p", "batch_x", {}, NOW) for _ in range(10))
    )
    assert sorted(added) == [False] * 9 + [True]
    assert len(await table_rows(store)) == 1
    assert [e["kind"] for e in await store.journal.list_events("batch_x")] == ["tracked"]


async def test_concurrent_migrations(tmp_path: Path) -> None:
    """Replicas migrating one PostgreSQL at once (init containers, ExecStartPre), as
    processes: all succeed; one migrates, the others wait for it and find it at head."""

    async for url in database("psycopg", tmp_path):
        await _migrate_at_once(url, tmp_path, processes=6)


async def _migrate_at_once(db_url: str, tmp_path: Path, processes: int) -> None:
    import asyncio
    import sys

    config = tmp_path / "w.yaml"
    config.write_text(f"database_url: {db_url}\n")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watchdog",
            "migrate",
            "--config",
            str(config),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [
        err.decode()[-300:] for _, err in results
    ]
    engine = create_engine(db_url)
    try:
        assert await schema_revision(engine) == (HEAD, HEAD)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("link", ["symlink", "hard link", "hard link elsewhere"])
def test_one_daemon_per_sqlite_file_by_any_name(tmp_path: Path, link: str) -> None:
    """The instance lock is the file's own (device and inode): a second name for the
    same file, a symlink or a hard link in any directory, is refused like the first."""
    import os

    from watchdog.storage.database import AlreadyRunning, instance_lock

    real = tmp_path / "watchdog.db"
    real.touch()
    other = tmp_path / ("elsewhere" if link.endswith("elsewhere") else "")
    other.mkdir(exist_ok=True)
    alias = other / "alias.db"
    (os.symlink if link == "symlink" else os.link)(real, alias)
    with (
        instance_lock(f"sqlite+aiosqlite:///{real}"),
        pytest.raises(AlreadyRunning, match="another batch-watchdog is running"),
        instance_lock(f"sqlite+aiosqlite:///{alias}"),
    ):
        pass
    with instance_lock(f"sqlite+aiosqlite:///{alias}"):  # free again once released
        pass


async def test_retention_prunes_old_routine_events_in_bounded_batches(store: Store) -> None:
    """counts_changed older than its age go, a batch at a time within the run's bound;
    newer ones and decision events stay."""
    from watchdog.core.config import RetentionSettings
    from watchdog.core.events import Event, Kind
    from watchdog.daemon.retention import prune

    old, new = NOW - timedelta(days=8), NOW - timedelta(days=1)
    events = [Event(old, "p", f"b{i}", Kind.COUNTS_CHANGED) for i in range(25)]
    events += [
        Event(new, "p", "b0", Kind.COUNTS_CHANGED),
        Event(old, "p", "b0", Kind.CANCEL_REQUESTED),
    ]
    await store.claims.apply([], events)
    bounded = RetentionSettings(batch=10, max_batches=2)
    assert await prune(store, bounded, NOW) == {"counts_changed": 20}  # bounded: 2 batches of 10
    assert await prune(store, bounded, NOW) == {"counts_changed": 5}
    assert await prune(store, bounded, NOW) == {"counts_changed": 0}
    left = [(e["kind"], e["at"]) for e in await store.journal.list_events()]
    assert left == [("counts_changed", new), ("cancel_requested", old)]
    keep_all = RetentionSettings(events={"counts_changed": None})
    assert await prune(store, keep_all, NOW + timedelta(days=30)) == {}


async def test_samples_thin_with_age_and_are_dropped_at_last(store: Store) -> None:
    """A poll's sample is written with its row; after thin_after a batch keeps one
    sample per step (and every status change), after drop_after none."""
    from sqlalchemy import select

    from watchdog.core.config import RetentionSettings
    from watchdog.daemon.retention import prune
    from watchdog.storage.tables import batch_samples

    await store.tracking.track("p", "b1", {}, NOW)
    minutes = [NOW - timedelta(days=10, minutes=m) for m in range(120, 0, -10)]  # 12 polls
    for i, at in enumerate(minutes):
        status = "in_progress" if i != 3 else "finalizing"  # a status change, and back
        change = Change("p", "b1", wire=wire("b1", status), last_polled_at=at)
        await store.claims.apply([change], [])
    ancient = Change(
        "p", "b1", wire=wire("b1", "in_progress"), last_polled_at=NOW - timedelta(days=100)
    )
    recent = Change("p", "b1", wire=wire("b1", "in_progress"), last_polled_at=NOW)
    await store.claims.apply([ancient, recent], [])

    async def left() -> list[tuple[Any, str]]:
        query = select(batch_samples.c.at, batch_samples.c.status).order_by(batch_samples.c.at)
        async with store.engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(query)]

    assert len(await left()) == 14
    await prune(store, RetentionSettings(), NOW)
    kept = await left()
    assert (NOW - timedelta(days=100), "in_progress") not in kept and kept[-1] == (
        NOW,
        "in_progress",
    )
    old = [(at, status) for at, status in kept if at < NOW]
    hours = {at.replace(minute=0, second=0, microsecond=0) for at, _ in old}
    # One per hour, plus the status change to finalizing and the return from it.
    assert len(old) == len(hours) + 2 and ("finalizing" in {s for _, s in old})


async def test_a_glance_at_the_batches_is_bounded(store: Store) -> None:
    """The status page's batches: the running ones first, then the newest finished, at
    most the limit."""
    for i in range(5):
        await store.tracking.track("p", f"done{i}", {}, NOW)
        done = wire(f"done{i}", "completed").model_copy(update={"created_at": 1_764_000_000 + i})
        await store.claims.apply([Change("p", f"done{i}", wire=done)], [])
    for i in range(3):
        await store.tracking.track("p", f"run{i}", {}, NOW)
    rows = await store.reads.some_batches(5, NOW - timedelta(days=400))
    ids = [r.tracked.view.batch_id for r in rows]
    assert set(ids[:3]) == {"run0", "run1", "run2"}  # in no order
    assert ids[3:] == ["done4", "done3"]


async def test_a_batch_ending_between_the_budget_reads_counts_once() -> None:
    """A replica ends a batch while another reads what changed for the budgets (after
    its read of the running batches, before its read of the ended ones): the batch is
    counted once — as running, or as ended — never both, or a budget under its limit
    would look over it and cancel a healthy batch. PostgreSQL only: SQLite's read takes
    the write lock (BEGIN IMMEDIATE), so no write lands between the reads."""
    import psycopg
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    from tests.databases import fresh_postgres

    async with fresh_postgres() as url:
        engine = create_engine(url)
        await upgrade(engine)
        store = Store(engine)
        await store.tracking.track("p", "b1", {}, NOW)
        await store.claims.apply([Change("p", "b1", wire=wire("b1", "in_progress"))], [])
        plain = make_url(url).set(drivername="postgresql").render_as_string(False)
        ended = []

        def end_it(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if not ended and "NOT IN" in statement and "finished_at >" not in statement:
                with psycopg.connect(plain, autocommit=True) as other:
                    other.execute(
                        "UPDATE batches SET status = 'cancelled', finished_at = %s"
                        " WHERE batch_id = 'b1'",
                        (NOW,),
                    )
                ended.append(True)

        event.listen(engine.sync_engine, "after_cursor_execute", end_it)
        try:
            changed = await store.reads.budget_changes(NOW - timedelta(days=1), NOW)
        finally:
            event.remove(engine.sync_engine, "after_cursor_execute", end_it)
            await engine.dispose()
        assert ended, "the running batches' read was not seen"
        running = [t.key for t in changed.running]
        finished = [(v.provider, v.batch_id) for v, _, _ in changed.finished]
        assert running + finished == [("p", "b1")], (running, finished)
