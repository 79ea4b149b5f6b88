"""Opening the database: engines (SQLite's pragmas and 0600 file), the one-daemon lock
on a SQLite file, and the schema's migrations."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    event,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


class SchemaError(Exception):
    """The database schema is not at head and will not be migrated implicitly."""


class DatabaseGone(Exception):
    """The SQLite file the daemon opened was deleted or replaced under it."""


class AlreadyRunning(Exception):
    """Another daemon holds this SQLite file."""


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


def dialect_insert(engine: AsyncEngine) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    return sqlite_insert if engine.dialect.name == "sqlite" else postgresql_insert


def file_identity(path: Path | None) -> tuple[int, int] | None:
    try:
        return None if path is None else (path.stat().st_dev, path.stat().st_ino)
    except FileNotFoundError:
        return None


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
