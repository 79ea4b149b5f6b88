"""The only code that speaks SQL (SQLAlchemy 2 async): engine setup, migrations,
tracking, claiming due batches under a lease, and writing rows and events together."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    TextClause,
    Update,
    and_,
    bindparam,
    case,
    cast,
    event,
    func,
    insert,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from watchdog.core.events import Event, Kind
from watchdog.core.models import (
    TERMINAL,
    BatchObject,
    BatchView,
    Counts,
    Tokens,
    from_unix,
    metadata_text,
)
from watchdog.core.rows import Change, Tracked
from watchdog.storage.tables import (
    COUNTS_AND_TOKENS,
    NOT_FINISHED,
    batch_events,
    batch_samples,
    batches,
    state,
)

TIMESTAMPS = (
    "created_at",
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class SchemaError(Exception):
    """The database schema is not at head and will not be migrated implicitly."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def redact_url(url: str) -> str:
    """A database URL fit to print or log: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show nothing of it
        return "(unparseable URL)"


def create_engine(url: str) -> AsyncEngine:
    """An engine for the URL; SQLite gets WAL, a busy timeout, and a 0600 file."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if parsed.database and parsed.database != ":memory:":
        _create_private_file(Path(parsed.database))
    engine = create_async_engine(url, connect_args={"timeout": 15})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


class AlreadyRunning(Exception):
    """Another daemon holds this SQLite file."""


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a URL names, resolved (None: PostgreSQL, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


@contextmanager
def instance_lock(url: str) -> Iterator[None]:
    """One daemon per SQLite file, for the daemon's lifetime (released by the kernel if
    the process dies): an exclusive lock on the database file itself, so any name for
    it — a symlink, a hard link, another mount — is the same lock; and one on
    ``<file>.lock``, which tells ``track`` that a daemon is using that path should the
    file be deleted under it. PostgreSQL needs none."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    _create_private_file(path)
    busy = (
        f"another batch-watchdog is running on {path} (by this or another name): SQLite "
        "supports one daemon per file (use PostgreSQL to run several)"
    )
    with _flocked(Path(f"{path}.lock"), busy), _flocked(path, busy):
        yield


@contextmanager
def _flocked(path: Path, busy: str) -> Iterator[None]:
    # flock, not fcntl: SQLite's own locks on the file are POSIX (fcntl) locks, which
    # flock's neither meet nor release on Linux.
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(busy) from None
        yield
    finally:
        os.close(fd)


def orphaned(url: str) -> str | None:
    """Why a command must not open this SQLite file: it is gone while a daemon still runs
    on its path (a new file there would be one the daemon never reads), or None."""
    path = sqlite_path(url)
    if path is None or path.exists():
        return None
    lock = Path(f"{path}.lock")
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"database file {path} is gone but a daemon still runs on it: restart it"
    finally:
        os.close(fd)
    return None


def _create_private_file(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (Python 3.11's sqlite3 would defer it).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=15000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # Take the write lock up front: no SQLITE_BUSY when a read turns into a write.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _insert(engine: AsyncEngine) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return sqlite_insert if engine.dialect.name == "sqlite" else postgresql_insert


def _identity(path: Path | None) -> tuple[int, int] | None:
    try:
        return None if path is None else (path.stat().st_dev, path.stat().st_ino)
    except FileNotFoundError:
        return None


CANCEL_LEDGER = "cancel_ledger"
LIST_PASS = "list_pass:"  # + provider: who pages its list now (watchdog_state)
BUDGET_PASS = "budget_pass"  # who assesses the budgets now
BUDGETS = "budgets"  # what the budgets last said, per group (budgets.news)
SAMPLES_THINNED = "samples_thinned"  # the last sample id retention has thinned


@dataclass(frozen=True, slots=True)
class ListPassState:
    """A provider's list pass: held by another replica now, and when the last complete
    discovery pass ended with the newest creation it listed."""

    elsewhere: bool = False
    discovered_at: datetime | None = None
    newest: float | None = None
    density: float | None = None  # batches listed per second of creation


def _held_by_other(entry: Mapping[str, Any], owner: str, now: datetime) -> bool:
    """A list pass entry another owner holds and has not let run out."""
    until = entry.get("until")
    live = isinstance(until, str) and datetime.fromisoformat(until) > now
    return live and entry.get("owner") != owner


def _pass_state(entry: Mapping[str, Any], owner: str, now: datetime) -> ListPassState:
    done, newest, density = entry.get("discovered_at"), entry.get("newest"), entry.get("density")
    return ListPassState(
        elsewhere=_held_by_other(entry, owner, now),
        discovered_at=datetime.fromisoformat(done) if isinstance(done, str) else None,
        newest=float(newest) if isinstance(newest, int | float) else None,
        density=float(density) if isinstance(density, int | float) else None,
    )


def _recent(ledger: Mapping[str, int], now: datetime) -> dict[str, int]:
    """The grants of the last hour."""
    start = now - timedelta(hours=1)
    return {at: int(n) for at, n in ledger.items() if datetime.fromisoformat(at) > start}


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("watchdog.migrations")))
    return config


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to head (Alembic, on this engine's connection)."""
    config = _alembic_config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def prepare_schema(db: AsyncEngine, url: str) -> None:
    """SQLite is brought to head on the spot; PostgreSQL must be migrated explicitly."""
    if is_sqlite(url):
        await upgrade(db)
        return
    current, head = await schema_revision(db)
    if current != head:
        raise SchemaError(
            f"database schema is at {current or 'nothing'}, head is {head}: "
            "run 'batch-watchdog migrate' first"
        )


async def schema_revision(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(current revision, head revision)."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(current), head


def wire_columns(batch: BatchObject) -> dict[str, Any]:
    """The ``batches`` columns that mirror a wire object."""
    counts, usage = batch.request_counts, batch.usage
    values: dict[str, Any] = {
        "status": batch.status,
        "endpoint": batch.endpoint,
        "model": batch.model,
        "metadata": batch.metadata,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "errors": batch.errors.model_dump(mode="json") if batch.errors else None,
        "request_total": counts.total if counts else None,
        "request_completed": counts.completed if counts else None,
        "request_failed": counts.failed if counts else None,
        "input_tokens": usage.input_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
    }
    for name in TIMESTAMPS:
        values[name] = from_unix(getattr(batch, name))
    return values


SAMPLED = ("status", *COUNTS_AND_TOKENS)


def _sample(change: Change, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """A poll that saw something new, as a ``batch_samples`` row from the columns it
    writes (None: nothing new, or not a poll's answer)."""
    at = change.last_polled_at
    if change.wire is None or not isinstance(at, datetime):
        return None
    return {"at": at, "provider": change.provider, "batch_id": change.batch_id} | {
        name: values.get(name) for name in SAMPLED
    }


def columns(change: Change) -> dict[str, Any]:
    """The ``batches`` columns a Change sets."""
    values = change.set()
    wire = values.pop("wire", None)
    if wire is not None:
        values |= wire_columns(wire)
    if values.get("pending") is not None:
        values["pending"] = {k: v.isoformat() for k, v in values["pending"].items()} or None
    return values


# The columns of the view the policies judge, and the batch's cost.
VIEWED = ("provider", "batch_id", "status", "model", "metadata", "created_at", "expires_at",
          *COUNTS_AND_TOKENS, "cost_usd")  # fmt: skip
# What a finished batch is to a budget: what it matches and groups on, and its cost.
FINISHED = tuple(batches.c[name] for name in VIEWED)
# What a claim reads back: the view and the tick's bookkeeping, not every column (file
# ids, errors, the other timestamps and labels stay where they are).
CLAIMED = tuple(
    batches.c[name]
    for name in (
        *VIEWED,
        "matched_policy",
        "poll_failures",
        "last_error",
        "cancel_policy",
        "cancel_requested_at",
        "cancel_attempts",
        "cancel_outcome",
        "pricing_missing_at",
        "tracked_at",
        "last_polled_at",
        "progress_at",
        "pending",
        "exempt_until",
        "exempt_reason",
        "cancel_projected_usd",
        "cancel_stuck_at",
        "cancelling_at",
        "cancel_retries",
    )
)


def _view(row: Mapping[Any, Any]) -> BatchView:
    counts = tokens = None
    if row["request_total"] is not None:
        counts = Counts(row["request_total"], row["request_completed"], row["request_failed"])
    if row["input_tokens"] is not None:
        tokens = Tokens(
            row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]
        )
    return BatchView(
        provider=row["provider"],
        batch_id=row["batch_id"],
        status=row["status"],
        model=row["model"],
        metadata=metadata_text(row["metadata"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        counts=counts,
        tokens=tokens,
    )


# What a running batch is to a budget: its view, cost, cancel and silence.
SPENDING = (
    *FINISHED,
    *(batches.c[n] for n in ("cancel_outcome", "cancel_attempts", "exempt_until", "exempt_reason")),
)


def _spending(row: Mapping[Any, Any]) -> Tracked:
    """A running batch as a budget reads it (the rest of a Tracked left empty)."""
    return Tracked(
        view=_view(row),
        cost_usd=row["cost_usd"],
        matched_policy=None,
        poll_failures=0,
        last_error=None,
        cancel_policy=None,
        cancel_requested_at=None,
        cancel_attempts=row["cancel_attempts"] or 0,
        cancel_outcome=row["cancel_outcome"],
        pricing_missing_at=None,
        tracked_at=None,
        exempt_until=row["exempt_until"],
        exempt_reason=row["exempt_reason"],
    )


async def _rows_of(parts: AsyncIterator[Sequence[Any]]) -> AsyncIterator[Any]:
    """The rows of a stream read a chunk at a time (one switch into the driver a
    chunk, not a row)."""
    async for part in parts:
        for row in part:
            yield row


def _key_of(row: Mapping[Any, Any]) -> tuple[str, str]:
    return (row["provider"], row["batch_id"])


def _tracked(row: Mapping[Any, Any]) -> Tracked:
    return Tracked(
        view=_view(row),
        cost_usd=row["cost_usd"],
        matched_policy=row["matched_policy"],
        poll_failures=row["poll_failures"] or 0,
        last_error=row["last_error"],
        cancel_policy=row["cancel_policy"],
        cancel_requested_at=row["cancel_requested_at"],
        cancel_attempts=row["cancel_attempts"] or 0,
        cancel_outcome=row["cancel_outcome"],
        pricing_missing_at=row["pricing_missing_at"],
        tracked_at=row["tracked_at"],
        last_polled_at=row["last_polled_at"],
        progress_at=row["progress_at"],
        pending={k: datetime.fromisoformat(v) for k, v in (row["pending"] or {}).items()},
        exempt_until=row["exempt_until"],
        exempt_reason=row["exempt_reason"],
        cancel_projected_usd=row["cancel_projected_usd"],
        cancel_stuck_at=row["cancel_stuck_at"],
        cancelling_at=row["cancelling_at"],
        cancel_retries=row["cancel_retries"] or 0,
    )


def _due(
    now: datetime, due_by: datetime | None = None
) -> tuple[ColumnElement[bool] | TextClause, ...]:
    """Due: not terminal, its poll time has come (by ``due_by``, default now), and nobody
    holds a lease on it."""
    c = batches.c
    return (
        or_(c.next_poll_at.is_(None), c.next_poll_at <= (due_by or now)),
        NOT_FINISHED,
        or_(c.lease_expires_at.is_(None), c.lease_expires_at < now),
    )


def _keyed(keys: Iterable[tuple[str, str]]) -> ColumnElement[bool]:
    """These batches: per provider, ``batch_id IN (…)`` — a primary-key lookup on both
    databases (a row-value IN of pairs makes SQLite scan the whole table)."""
    by_provider: dict[str, list[str]] = {}
    for provider, batch_id in keys:
        by_provider.setdefault(provider, []).append(batch_id)
    c = batches.c
    return or_(*(and_(c.provider == p, c.batch_id.in_(ids)) for p, ids in by_provider.items()))


@lru_cache(maxsize=64)
def _bulk_update(columns: tuple[str, ...]) -> Update:
    """One UPDATE for every row that sets these columns (an executemany)."""
    c = batches.c
    return (
        update(batches)
        .where(c.provider == bindparam("k_provider"), c.batch_id == bindparam("k_batch_id"))
        .values({name: bindparam(f"v_{name}", type_=c[name].type) for name in columns})
    )


def _event_row(item: Event) -> dict[str, Any]:
    return {
        "at": item.at,
        "provider": item.provider,
        "batch_id": item.batch_id,
        "kind": str(item.kind),
        "from_status": item.from_status,
        "to_status": item.to_status,
        "policy": item.policy,
        "detail": dict(item.detail) if item.detail is not None else None,
    }


STREAM_ROWS = 1000  # rows fetched at a time when streaming


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to read: of one batch, a provider, some kinds, a time window."""

    batch_id: str | None = None
    provider: str | None = None
    kinds: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def terms(self) -> list[ColumnElement[bool]]:
        e, terms = batch_events.c, []
        if self.batch_id is not None:
            terms.append(e.batch_id == self.batch_id)
        if self.provider is not None:
            terms.append(e.provider == self.provider)
        if self.kinds:
            terms.append(e.kind.in_(self.kinds))
        if self.since is not None:
            terms.append(e.at >= self.since)
        if self.until is not None:
            terms.append(e.at < self.until)
        return terms


@dataclass(frozen=True, slots=True)
class BudgetChanges:
    """What changed for the budgets since they last looked."""

    running: list[Tracked]
    finished: list[tuple[BatchView, Any, datetime]]  # (the batch, its cost, when it ended)
    untracked: set[tuple[str, str]]


class DatabaseGone(Exception):
    """The SQLite file the daemon opened was deleted or replaced under it."""


class Store:
    """Reads and writes ``batches`` and ``batch_events``; one short transaction a call."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._file = sqlite_path(engine.url.render_as_string())
        self._identity = _identity(self._file)

    def check_file(self) -> None:
        """A SQLite file deleted or replaced under the daemon (``rm``, a restore, a
        ``track`` that then created a new one) is noticed, not written to in vain."""
        if self._file is None or self._identity is None:
            return
        now = _identity(self._file)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise DatabaseGone(
                f"database file {self._file} was {what} while the daemon ran; restart it"
            )

    async def track(
        self, provider: str, batch_id: str, labels: Mapping[str, str], now: datetime
    ) -> bool:
        """Start tracking; False (and nothing written) when it is tracked already."""
        row = {"provider": provider, "batch_id": batch_id, "tracked_at": now}
        # One statement that tolerates a concurrent tracker of the same id.
        query = _insert(self.engine)(batches).values(**row, labels=dict(labels) or None)
        async with self.engine.begin() as conn:
            added = await conn.execute(query.on_conflict_do_nothing().returning(batches.c.batch_id))
            if added.first() is None:
                return False
            await self._insert_events(conn, [Event(now, provider, batch_id, Kind.TRACKED)])
        return True

    async def untrack(self, batch_id: str, provider: str | None, now: datetime) -> list[str]:
        """Stop tracking (events stay); the providers it was removed from."""
        where = batches.c.batch_id == batch_id
        if provider is not None:
            where &= batches.c.provider == provider
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(select(batches.c.provider, batches.c.status).where(where))
            ).all()
            await conn.execute(batches.delete().where(where))
            events = [Event(now, p, batch_id, Kind.UNTRACKED, from_status=s) for p, s in rows]
            await self._insert_events(conn, events)
        return [p for p, _ in rows]

    async def claim_due(
        self,
        now: datetime,
        owner: str,
        lease: timedelta,
        limit: int,
        *,
        due_by: datetime | None = None,
        only: Sequence[tuple[str, str]] = (),
        skip: Iterable[str] = (),
    ) -> list[Tracked]:
        """Lease up to ``limit`` non-terminal batches due by ``due_by`` (default now) to
        ``owner`` and return them; with ``only``, of those batches alone (as a list page
        found them); none of the ``skip`` providers' (another replica pages their list)."""
        c = batches.c
        narrowed = [_keyed(only)] if only else []
        if skipped := sorted(skip):
            narrowed.append(c.provider.not_in(skipped))
        due = (
            select(c.provider, c.batch_id)
            .where(*_due(now, due_by), *narrowed)
            # No ORDER BY: every due row is taken within the tick anyway, and without it
            # both databases answer from the due index (an OR of two lookups) instead of
            # walking it whole — what keeps an idle tick cheap.
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(batches)
            .where(tuple_(c.provider, c.batch_id).in_(due))
            .values(lease_owner=owner, lease_expires_at=now + lease)
            .returning(*CLAIMED)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(claim)).mappings().all()
        return [_tracked(row) for row in rows]

    async def next_due(self, now: datetime, skip: Iterable[str] = ()) -> datetime | None:
        """The earliest next_poll_at of a batch still to be polled that nobody else holds
        (None: none, or only never-polled ones, which the next tick takes), none of the
        ``skip`` providers'."""
        c = batches.c
        query = select(func.min(c.next_poll_at)).where(
            NOT_FINISHED,
            or_(c.lease_expires_at.is_(None), c.lease_expires_at < now),
        )
        if skipped := sorted(skip):
            query = query.where(c.provider.not_in(skipped))
        async with self.engine.connect() as conn:
            when: datetime | None = (await conn.execute(query)).scalar()
        return when

    async def replan(self, now: datetime, interval: timedelta, lease: timedelta) -> int:
        """After the wall clock stepped back: every poll planned further off than an
        interval is due now, every lease longer than a lease ends then (both were set by
        the clock before the step). How many polls were brought forward."""
        c = batches.c
        polls = update(batches).where(NOT_FINISHED, c.next_poll_at > now + interval)
        leases = update(batches).where(c.lease_expires_at > now + lease)
        async with self.engine.begin() as conn:
            moved = await conn.execute(polls.values(next_poll_at=now))
            await conn.execute(leases.values(lease_expires_at=now + lease))
        return int(moved.rowcount or 0)

    async def backlog(self, now: datetime) -> tuple[int, datetime | None]:
        """Batches due now that nobody holds, and the oldest one's poll time."""
        query = select(func.count(), func.min(batches.c.next_poll_at)).where(*_due(now))
        async with self.engine.connect() as conn:
            count, oldest = (await conn.execute(query)).one()
        return int(count), oldest

    async def due_ids(
        self, now: datetime, at_least: int = 1
    ) -> dict[str, tuple[set[str], datetime | None]]:
        """For each provider: the ids of the batches due now, and the oldest one's
        creation; empty when fewer than ``at_least`` are due in all (checked first,
        cheaply, through the due index, so that an idle tick stays idle)."""
        c = batches.c
        enough = select(c.batch_id).where(*_due(now)).limit(at_least).subquery()
        query = select(c.provider, c.batch_id, c.created_at).where(*_due(now))
        found: dict[str, tuple[set[str], datetime | None]] = {}
        async with self.engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(enough))).scalar_one()
            if count < at_least:
                return {}
            for provider, batch_id, created in await conn.execute(query):
                ids, oldest = found.get(provider, (set(), None))
                ids.add(batch_id)
                if created is not None and (oldest is None or created < oldest):
                    oldest = created
                found[provider] = (ids, oldest)
        return found

    async def apply(
        self, changes: Sequence[Change], events: Iterable[Event], *, owner: str | None = None
    ) -> set[tuple[str, str]]:
        """Write row changes and their events in one transaction, rows with the same columns
        in one executemany. With ``owner``, only rows this owner still leases are written (a
        fence against a replica whose lease ran out), and the events of the others dropped.
        Returns the keys written."""
        wanted = {c.key: columns(c) for c in changes}
        async with self.engine.begin() as conn:
            written = await self._held(conn, set(wanted), owner)
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for (provider, batch_id), values in wanted.items():
                if (provider, batch_id) in written and values:
                    params = {f"v_{k}": v for k, v in values.items()}
                    params |= {"k_provider": provider, "k_batch_id": batch_id}
                    groups.setdefault(tuple(sorted(values)), []).append(params)
            for names, rows in groups.items():
                await conn.execute(_bulk_update(names), rows)
            lost = set(wanted) - written
            kept = [e for e in events if e.key not in lost]
            await self._insert_events(conn, kept)
            samples = [_sample(c, wanted[c.key]) for c in changes if c.key in written]
            if rows := [s for s in samples if s is not None]:
                await conn.execute(insert(batch_samples), rows)
        return written

    async def _held(
        self, conn: AsyncConnection, keys: set[tuple[str, str]], owner: str | None
    ) -> set[tuple[str, str]]:
        if owner is None or not keys:
            return keys
        c = batches.c
        query = (
            select(c.provider, c.batch_id)
            .where(c.lease_owner == owner, _keyed(keys))
            .with_for_update()  # nobody takes them over before this transaction commits
        )
        return {(p, b) for p, b in await conn.execute(query)}

    async def _insert_events(self, conn: AsyncConnection, events: list[Event]) -> None:
        if events:
            await conn.execute(insert(batch_events), [_event_row(e) for e in events])

    async def release(self, owner: str | None) -> None:
        """Give up this owner's leases (at shutdown), or everyone's (None)."""
        query = update(batches).values(lease_owner=None, lease_expires_at=None)
        if owner is None:
            query = query.where(batches.c.lease_owner.is_not(None))
        else:
            query = query.where(batches.c.lease_owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(query)

    async def find(
        self, batch_id: str, provider: str | None
    ) -> list[tuple[Tracked, datetime | None]]:
        """A tracked batch (at each provider that has one by this id, or at ``provider``),
        with its next poll."""
        c = batches.c
        query = select(*CLAIMED, c.next_poll_at).where(c.batch_id == batch_id)
        if provider is not None:
            query = query.where(c.provider == provider)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(c.provider))).mappings().all()
        return [(_tracked(row), row["next_poll_at"]) for row in rows]

    async def history(self, since: datetime) -> AsyncIterator[tuple[Tracked, list[dict[str, Any]]]]:
        """What ``replay`` judges again, one batch at a time (memory holds one batch's
        samples, not the window's): each batch sampled since ``since`` with its samples
        in time order — two streams in the same order, merged as they come."""
        s, c = batch_samples.c, batches.c
        sampled = select(s.provider, s.batch_id, s.at, *(s[name] for name in SAMPLED))
        sampled = sampled.where(s.at >= since).order_by(s.provider, s.batch_id, s.at, s.id)
        seen = select(s.id).where(s.provider == c.provider, s.batch_id == c.batch_id, s.at >= since)
        rows = select(*CLAIMED).where(seen.exists()).order_by(c.provider, c.batch_id)
        options = {"yield_per": STREAM_ROWS}
        # One connection, two cursors read in turn (SQLite's transactions take the write
        # lock up front: a second connection would wait on the first).
        async with self.engine.connect() as conn:
            stream = await conn.stream(sampled.execution_options(**options))
            samples = _rows_of(stream.mappings().partitions())  # a chunk at a time
            pending = await anext(samples, None)
            batch_rows = (await conn.stream(rows.execution_options(**options))).mappings()
            async for part in batch_rows.partitions():
                for row in part:
                    tracked, mine = _tracked(row), []
                    while pending is not None and _key_of(pending) <= tracked.key:
                        if _key_of(pending) == tracked.key:
                            mine.append(dict(pending))
                        pending = await anext(samples, None)
                    yield tracked, mine

    async def first_cancels(self, since: datetime) -> dict[tuple[str, str], Any]:
        """Each batch's first cancel since ``since`` — ``cancel_requested``, or in a dry
        run the ``policy_matched`` that would have sent it — as (time, policy, dry)."""
        e = batch_events.c
        decided = (Kind.CANCEL_REQUESTED, Kind.POLICY_MATCHED)
        query = select(e.provider, e.batch_id, e.at, e.policy, e.kind, e.detail).where(
            e.kind.in_(decided), e.at >= since
        )
        first: dict[tuple[str, str], Any] = {}
        async with self.engine.connect() as conn:
            result = await conn.stream(
                query.order_by(e.id).execution_options(yield_per=STREAM_ROWS)
            )
            async for provider, batch_id, at, policy, kind, detail in result:
                # A dry run's decision to cancel is its policy_matched (nothing was sent).
                dry = kind == Kind.POLICY_MATCHED
                said = detail or {}
                if dry and (said.get("action"), said.get("dry_run")) != ("cancel", True):
                    continue
                first.setdefault((provider, batch_id), (at, policy, dry))
        return first

    async def report_rows(self, since: datetime) -> AsyncIterator[dict[str, Any]]:
        """The batches created since ``since``, with what a spend report needs (through
        the created_at index; streamed)."""
        c = batches.c
        names = "provider model metadata created_at cost_usd cancel_policy matched_policy"
        names += " cancel_outcome cancel_projected_usd"
        query = select(*(c[n] for n in names.split())).where(c.created_at >= since)
        async with self.engine.connect() as conn:
            async for row in await conn.stream(query.execution_options(yield_per=1000)):
                yield dict(row._mapping)

    async def some_batches(self, limit: int, since: datetime) -> list[dict[str, Any]]:
        """At most ``limit`` tracked batches for a glance: the running ones (through the
        due index), then the newest finished since ``since`` (a range of the creation
        index) — never the whole history."""
        c = batches.c
        async with self.engine.connect() as conn:
            running = await conn.execute(select(batches).where(NOT_FINISHED).limit(limit))
            rows = [dict(r) for r in running.mappings()]
            if len(rows) < limit:
                recent = (c.created_at >= since, c.status.in_(sorted(TERMINAL)))
                finished = select(batches).where(*recent)
                query = finished.order_by(c.created_at.desc()).limit(limit - len(rows))
                rows += [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows

    async def list_batches(self, status: str | None = None) -> list[dict[str, Any]]:
        query = select(batches).order_by(
            batches.c.tracked_at, batches.c.provider, batches.c.batch_id
        )
        if status is not None:
            query = query.where(batches.c.status == status)
        async with self.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings()]

    async def list_events(
        self, batch_id: str | None = None, provider: str | None = None
    ) -> list[dict[str, Any]]:
        """Every matching event, oldest first (tests and small reads; ``events`` streams)."""
        wanted = EventFilter(batch_id=batch_id, provider=provider)
        return [row async for row in self.stream_events(wanted)]

    async def stream_events(self, wanted: EventFilter) -> AsyncIterator[dict[str, Any]]:
        """The matching events, oldest first, as the database hands them over (a
        server-side cursor on PostgreSQL): memory does not grow with their number.
        With ``limit``, the newest that many."""
        query = select(batch_events).where(*wanted.terms())
        e = batch_events.c
        if wanted.limit is not None:  # the newest N, then in order
            # Newest by time: an index (at, or kind and at) walked backwards serves it;
            # by id, SQLite would walk the whole table backwards for a rare kind.
            newest = query.order_by(e.at.desc(), e.id.desc()).limit(wanted.limit).subquery()
            query = select(newest).order_by(newest.c.id)
        else:
            query = query.order_by(e.id)
        async with self.engine.connect() as conn:
            rows = await conn.stream(query.execution_options(yield_per=STREAM_ROWS))
            async for row in rows.mappings():
                yield dict(row)

    async def prune_events(self, kind: str, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events of ``kind`` from before ``before``,
        in one short transaction (through the (kind, at) index): how many."""
        e = batch_events.c
        oldest = (
            select(e.id).where(e.kind == kind, e.at < before).order_by(e.at).limit(limit)
        ).scalar_subquery()
        async with self.engine.begin() as conn:
            result = await conn.execute(batch_events.delete().where(e.id.in_(oldest)))
        return int(result.rowcount or 0)

    async def drop_samples(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest samples from before ``before``: how many."""
        s = batch_samples.c
        oldest = (select(s.id).where(s.at < before).order_by(s.at).limit(limit)).scalar_subquery()
        async with self.engine.begin() as conn:
            result = await conn.execute(batch_samples.delete().where(s.id.in_(oldest)))
        return int(result.rowcount or 0)

    async def thin_samples(self, before: datetime, step: timedelta, limit: int) -> int:
        """Thin the next ``limit`` samples (by id, from where the last run stopped) older
        than ``before``: of each batch, keep the first sample of every ``step`` and every
        status change, delete the rest. How many were looked at (0: done for now)."""
        s, cursor = batch_samples.c, await self.get_state(SAMPLES_THINNED) or {}
        query = (
            select(s.id, s.provider, s.batch_id, s.at, s.status)
            .where(s.id > int(cursor.get("id", 0)), s.at < before)
            .order_by(s.id)
            .limit(limit)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
            last: dict[tuple[str, str], tuple[int, str | None]] = {}
            gone = []
            for sample_id, provider, batch_id, at, status in rows:
                mark = (int(at.timestamp() // step.total_seconds()), status)
                if last.get((provider, batch_id)) == mark:
                    gone.append(sample_id)
                last[(provider, batch_id)] = mark
            if gone:
                await conn.execute(batch_samples.delete().where(s.id.in_(gone)))
        if rows:
            await self.set_state(SAMPLES_THINNED, {"id": rows[-1][0]}, rows[-1][3])
        return len(rows)

    async def due_unsettled_cancels(self, now: datetime) -> int:
        """Make every batch with a cancel_requested but no outcome, whose sender is gone
        (its lease expired or released), due now, so the first tick reconciles it from
        the provider's state (after a crash). A cancel another replica still has in
        flight is left to it. How many."""
        c = batches.c
        where = (
            c.cancel_requested_at.is_not(None)
            & c.cancel_outcome.is_(None)
            & or_(c.lease_expires_at.is_(None), c.lease_expires_at < now)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(update(batches).where(where).values(next_poll_at=None))
        return int(result.rowcount or 0)

    async def exempt(
        self,
        batch_id: str,
        provider: str | None,
        until: datetime | None,
        reason: str | None,
        now: datetime,
    ) -> list[str]:
        """Silence (``until`` set) or unsilence (None) a batch; the providers it applied to."""
        where = batches.c.batch_id == batch_id
        if provider is not None:
            where &= batches.c.provider == provider
        kind = Kind.EXEMPTED if until is not None else Kind.UNEXEMPTED
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(batches.c.provider).where(where))).all()
            values: dict[str, Any] = {"exempt_until": until, "exempt_reason": reason}
            if until is None:  # lifting a silence: judge the batch again at the next tick
                values["next_poll_at"] = None
            await conn.execute(update(batches).where(where).values(**values))
            detail = {"until": until.isoformat(), "reason": reason} if until else None
            await self._insert_events(
                conn, [Event(now, p, batch_id, kind, detail=detail) for (p,) in rows]
            )
        return [p for (p,) in rows]

    async def get_state(self, key: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            found = await conn.execute(select(state.c.value).where(state.c.key == key))
            value = found.scalar()
        return None if value is None else dict(value)

    async def set_state(
        self, key: str, value: dict[str, Any] | None, now: datetime, events: Iterable[Event] = ()
    ) -> None:
        """Replace (or, with None, delete) a daemon-wide state entry, with its events."""
        async with self.engine.begin() as conn:
            await conn.execute(state.delete().where(state.c.key == key))
            if value is not None:
                await conn.execute(insert(state).values(key=key, value=value, updated_at=now))
            await self._insert_events(conn, list(events))

    async def reserve_cancels(self, want: int, per_hour: int, now: datetime) -> int:
        """Take up to ``want`` cancels from the hourly budget all replicas share, in one
        locked transaction (so two replicas cannot both spend the last ones): how many
        were granted. The ledger keeps the last hour's grants by time (one entry per
        tick that sent any), so no event scan is needed."""
        key = state.c.key == CANCEL_LEDGER
        seed = {"key": CANCEL_LEDGER, "value": {}, "updated_at": now}
        async with self.engine.begin() as conn:
            await conn.execute(_insert(self.engine)(state).values(seed).on_conflict_do_nothing())
            found = await conn.execute(select(state.c.value).where(key).with_for_update())
            ledger = _recent(found.scalar() or {}, now)
            granted = max(0, min(want, per_hour - sum(ledger.values())))
            if granted:
                ledger[now.isoformat()] = ledger.get(now.isoformat(), 0) + granted
            await conn.execute(update(state).where(key).values(value=ledger, updated_at=now))
        return granted

    async def take_turn(self, key: str, owner: str, now: datetime, until: datetime) -> bool:
        """Hold the daemon-wide turn ``key`` (a provider's list pass, the budgets)
        until ``until``, or renew it: False when another replica holds it, so that one
        replica at a time does that work."""
        where = state.c.key == key
        seed = {"key": key, "value": {}, "updated_at": now}
        async with self.engine.begin() as conn:
            await conn.execute(_insert(self.engine)(state).values(seed).on_conflict_do_nothing())
            found = await conn.execute(select(state.c.value).where(where).with_for_update())
            entry = dict(found.scalar() or {})
            if _held_by_other(entry, owner, now):
                return False
            entry |= {"owner": owner, "until": until.isoformat()}
            await conn.execute(update(state).where(where).values(value=entry, updated_at=now))
        return True

    async def end_turn(
        self, key: str, owner: str, now: datetime, remember: Mapping[str, Any] | None = None
    ) -> None:
        """Give up this owner's turn ``key`` (someone else's is left alone), keeping
        ``remember`` in it for the next holder."""
        where = state.c.key == key
        async with self.engine.begin() as conn:
            found = await conn.execute(select(state.c.value).where(where).with_for_update())
            entry = dict(found.scalar() or {})
            if entry.get("owner") != owner:
                return
            entry = {k: v for k, v in entry.items() if k not in ("owner", "until")}
            entry |= remember or {}
            await conn.execute(update(state).where(where).values(value=entry, updated_at=now))

    async def list_passes(self, owner: str, now: datetime) -> dict[str, ListPassState]:
        """Every provider's list pass as the replicas share it."""
        query = select(state.c.key, state.c.value).where(state.c.key.startswith(LIST_PASS))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {k.removeprefix(LIST_PASS): _pass_state(v or {}, owner, now) for k, v in rows}

    async def discover(self, provider: str, batch_ids: Sequence[str], now: datetime) -> list[Event]:
        """Start tracking those of ``batch_ids`` that are neither tracked nor were ever
        untracked (an untrack sticks), each with a ``tracked`` event (via discovery):
        the events, committed."""
        c, e = batches.c, batch_events.c
        if not batch_ids:
            return []
        async with self.engine.begin() as conn:
            query = select(c.batch_id).where(_keyed((provider, b) for b in batch_ids))
            known = {b for (b,) in await conn.execute(query)}
            fresh = [b for b in dict.fromkeys(batch_ids) if b not in known]
            if not fresh:
                return []
            dropped = select(e.batch_id).where(
                e.provider == provider, e.batch_id.in_(fresh), e.kind == Kind.UNTRACKED
            )
            gone = {b for (b,) in await conn.execute(dropped)}
            rows = [{"provider": provider, "batch_id": b, "tracked_at": now} for b in fresh]
            rows = [r for r in rows if r["batch_id"] not in gone]
            if not rows:
                return []
            query = _insert(self.engine)(batches).values(rows).on_conflict_do_nothing()
            added = [b for (b,) in await conn.execute(query.returning(c.batch_id))]
            detail = {"via": "discovery"}
            events = [Event(now, provider, b, Kind.TRACKED, detail=detail) for b in added]
            await self._insert_events(conn, events)
        return events

    async def spending(self, since: datetime) -> list[Tracked]:
        """The batches a budget may count: still running, or created since ``since``.
        One statement (one snapshot: a batch finishing meanwhile is not read twice) of
        two parts, each through an index (an OR of the two would scan the table): the
        unfinished ones through the due index, the finished ones by creation."""
        c = batches.c
        running = select(*CLAIMED).where(NOT_FINISHED)
        finished = select(*CLAIMED).where(c.created_at >= since, c.status.in_(sorted(TERMINAL)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(union_all(running, finished))).mappings().all()
        return [_tracked(row) for row in rows]

    async def running(self) -> list[Tracked]:
        """The batches still to be polled (through the due index): what a budget may
        still choose, and whose projection moves."""
        async with self.engine.connect() as conn:
            return await self._running(conn)

    async def _running(self, conn: AsyncConnection) -> list[Tracked]:
        # Only what a budget reads (a third of a claim's columns: each costs per row).
        rows = (await conn.execute(select(*SPENDING).where(NOT_FINISHED))).mappings().all()
        return [_spending(row) for row in rows]

    async def finished_created(self, since: datetime) -> AsyncIterator[tuple[BatchView, Any]]:
        """The finished batches created since ``since`` (through the creation index),
        streamed a chunk at a time with what a budget reads of them (what it matches and
        groups on, its cost): a budget's window of the past, read once."""
        c = batches.c
        names = ("provider", "batch_id", "status", "model", "metadata", "created_at", "cost_usd")
        query = select(*(c[n] for n in names))
        query = query.where(c.created_at >= since, c.status.in_(sorted(TERMINAL)))
        async with self.engine.connect() as conn:
            stream = await conn.stream(query.execution_options(yield_per=STREAM_ROWS))
            async for part in stream.partitions():
                for provider, batch_id, status, model, meta, created, cost in part:
                    view = BatchView(provider, batch_id, status, model, metadata_text(meta),
                                     created)  # fmt: skip
                    yield view, cost

    async def budget_changes(self, ended: datetime, untracked: datetime) -> BudgetChanges:
        """In one read: the running batches, those that ended after ``ended`` (through
        the finished_at index) and those untracked after ``untracked`` (the events' kind
        index) — what changed for the budgets, never their whole window."""
        c, e = batches.c, batch_events.c
        finished = select(*FINISHED, c.finished_at)
        finished = finished.where(c.finished_at > ended, c.status.in_(sorted(TERMINAL)))
        gone = select(e.provider, e.batch_id).where(e.kind == Kind.UNTRACKED, e.at > untracked)
        async with self.engine.connect() as conn:
            running = await self._running(conn)
            rows = (await conn.execute(finished)).mappings()
            ends = [(_view(r), r["cost_usd"], r["finished_at"]) for r in rows]
            left = {(p, b) for p, b in await conn.execute(gone) if p and b}
        return BudgetChanges(running, ends, left)

    async def running_created(self) -> dict[str, list[float]]:
        """Per provider, the creation (Unix seconds) of each batch still to be polled
        (through the due index: what is running, not the history)."""
        c = batches.c
        found: dict[str, list[float]] = {}
        async with self.engine.connect() as conn:
            for provider, created in await conn.execute(
                select(c.provider, c.created_at).where(NOT_FINISHED)
            ):
                if created is not None:
                    found.setdefault(provider, []).append(created.timestamp())
        return found

    async def spend_by_day(self, since: datetime) -> list[tuple[str, str, float, float]]:
        """(day of creation, provider, known spend, saved by cancels) for the batches
        created since ``since``, summed by the database (a chart's figures: floats)."""
        c = batches.c
        if self.engine.dialect.name == "sqlite":
            day: Any = func.substr(c.created_at, 1, 10)
        else:
            day = func.to_char(func.timezone("UTC", c.created_at), "YYYY-MM-DD")
        # As floats: SQLite keeps the decimals as text, which would compare as text.
        cost, projected = cast(c.cost_usd, Float), cast(c.cancel_projected_usd, Float)
        took = c.cancel_outcome == "succeeded"
        saved = case((took & (projected > cost), projected - cost), else_=0)
        query = (
            select(day, c.provider, func.sum(cost), func.sum(saved))
            .where(c.created_at >= since)
            .group_by(day, c.provider)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(str(d), p, float(spend or 0), float(kept or 0)) for d, p, spend, kept in rows]

    async def stats(self) -> list[tuple[str, str | None, int, Decimal | None]]:
        """(provider, status, count, known cost) for the metrics gauges."""
        c = batches.c
        query = select(c.provider, c.status, func.count(), func.sum(c.cost_usd)).group_by(
            c.provider, c.status
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            # SQLite sums the decimals' text as floats: good enough for a gauge.
            return [
                (p, s, int(n), None if sum_ is None else Decimal(str(sum_)))
                for p, s, n, sum_ in rows
            ]

    async def ready(self) -> str | None:
        """None when the database answers and the schema is at head, else why not."""
        try:
            self.check_file()
        except DatabaseGone as exc:
            return str(exc)
        try:
            current, head = await schema_revision(self.engine)
        except Exception as exc:  # any driver's way of saying the database is not there
            return "database unreachable: " + " ".join(str(exc).split())[:200]
        if current != head:
            return f"schema at {current or 'nothing'}, head is {head}"
        return None
