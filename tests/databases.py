"""Databases for tests: a SQLite file, or a fresh PostgreSQL database per test
(created and dropped here). Outside CI a missing server skips with the reason;
under CI=true it fails."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

PG_URL = os.environ.get(
    "BATCH_WATCHDOG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def fresh_postgres(driver: str = "psycopg") -> AsyncIterator[str]:
    """A new, empty database on the test server; its URL uses ``driver``."""
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"watchdog_test_{secrets.token_hex(6)}"
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure to reach the server
        await admin.dispose()
        _unavailable(" ".join(str(exc).split())[:300])
    url = make_url(PG_URL).set(drivername=f"postgresql+{driver}", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def dump(url: str) -> bytes:
    """Everything the database holds, for grepping (a SQLite file's bytes, or PG rows)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        paths = [f"{parsed.database}{suffix}" for suffix in ("", "-wal", "-shm")]
        return b"".join(Path(p).read_bytes() for p in paths if os.path.exists(p))
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = []
            for table in ("batches", "batch_events"):
                rows += (await conn.execute(text(f"SELECT * FROM {table}"))).all()
        return repr(rows).encode()
    finally:
        await engine.dispose()


async def has_schema(url: str) -> bool:
    """Whether anything was ever migrated into this database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return os.path.exists(parsed.database or "")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(text("SELECT to_regclass('public.alembic_version')"))
            return found.scalar() is not None
    finally:
        await engine.dispose()


async def terminate_backends(database: str | None, *, refuse_new: bool = False) -> None:
    """Kill every connection to ``database`` (and, with refuse_new, keep new ones out)."""
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            if refuse_new:
                await conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
    finally:
        await admin.dispose()


async def allow_connections(database: str | None) -> None:
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
    finally:
        await admin.dispose()
