"""Alembic environment: runs on the connection watchdog hands over (``migrate``, ``run``),
or on ``sqlalchemy.url`` when Alembic's own CLI is used."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from watchdog.storage.tables import metadata

config = context.config


# One migrator at a time: replicas that start together (init containers, ExecStartPre)
# would otherwise all create the same tables. The lock ends with the transaction.
LOCK_KEY = 0x6261746368_5744  # "batchWD"


def run_on(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for ALTERs; a no-op on PostgreSQL
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
    else:
        asyncio.run(run_from_url(config.get_main_option("sqlalchemy.url") or ""))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported")
main()
