"""The schema (a contract: other programs insert rows into ``batches``). Alembic
migrations in ``migrations/`` create it; this module only declares it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    func,
    text,
)
from sqlalchemy.types import TypeEngine

from watchdog.core.events import Kind
from watchdog.core.models import TERMINAL

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would drop the offset silently)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """USD as an exact decimal (12 places: a token costs fractions of a micro-dollar).
    PostgreSQL stores NUMERIC; SQLite, whose NUMERIC is a float underneath, stores the
    decimal's text so that nothing is rounded on the way."""

    impl = Numeric(24, 12)
    cache_ok = True
    PLACES = Decimal("1e-12")

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(24, 12))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = value if isinstance(value, Decimal) else Decimal(str(value))
        exact = exact.quantize(self.PLACES)
        return str(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return (
            None
            if value is None
            else Decimal(str(value))
            if not isinstance(value, Decimal)
            else value
        )


BigId = BigInteger().with_variant(Integer(), "sqlite")

# Rows a tick may still poll. The same text is the due index's predicate and a term of
# every due query, so that both databases use the partial index (a query's predicate
# must repeat the index's, literally, for SQLite to use it): the finished batches,
# which grow for ever, are never scanned again.
NOT_FINISHED = text(  # parenthesised: it is and-ed into queries as it stands
    "(status IS NULL OR status NOT IN ({}))".format(", ".join(f"'{s}'" for s in sorted(TERMINAL)))
)
COUNTS_AND_TOKENS = (
    "request_total",
    "request_completed",
    "request_failed",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def counts_and_tokens() -> list[Column[int]]:
    """The request counts and usage tokens, as ``batches`` and ``batch_samples`` keep
    them (fresh columns for each table)."""
    return [Column(name, BigInteger) for name in COUNTS_AND_TOKENS]


batches = Table(
    "batches",
    metadata,
    Column("provider", String(64), nullable=False),
    Column("batch_id", String(128), nullable=False),
    # Last seen wire fields.
    Column("status", String(64)),
    Column("endpoint", String(128)),
    Column("model", String(256)),
    Column("metadata", JSON),
    Column("created_at", UTCDateTime),
    Column("expires_at", UTCDateTime),
    Column("in_progress_at", UTCDateTime),
    Column("finalizing_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("failed_at", UTCDateTime),
    Column("expired_at", UTCDateTime),
    Column("cancelling_at", UTCDateTime),
    Column("cancelled_at", UTCDateTime),
    Column("output_file_id", String(128)),
    Column("error_file_id", String(128)),
    Column("errors", JSON),
    *counts_and_tokens(),
    # Derived.
    Column("cost_usd", Money),
    Column("matched_policy", String(64)),
    # Tracking and scheduling.
    Column("labels", JSON),
    Column("tracked_at", UTCDateTime),
    Column("next_poll_at", UTCDateTime),
    Column("last_polled_at", UTCDateTime),
    Column("poll_failures", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", UTCDateTime),
    # Cancel bookkeeping: requested is written before the request goes out.
    Column("cancel_policy", String(64)),
    Column("cancel_requested_at", UTCDateTime),
    Column("cancel_attempts", Integer, nullable=False, server_default="0"),
    Column("cancel_outcome", String(32)),
    # Transient failures in a row of the cancel under way (migration 0003): its backoff.
    Column("cancel_retries", Integer, nullable=False, server_default="0"),
    Column("cancel_finished_at", UTCDateTime),
    Column("pricing_missing_at", UTCDateTime),
    # Safety (migration 0002): `for:` clocks, progress history, silences, follow-through.
    Column("pending", JSON),  # {policy: since} for policies whose `for:` is running
    Column("progress_at", UTCDateTime),  # when completed+failed last moved
    Column("exempt_until", UTCDateTime),
    Column("exempt_reason", Text),
    Column("cancel_projected_usd", Money),
    Column("cancel_stuck_at", UTCDateTime),
    # When the daemon saw the batch end (migration 0008): what budgets take in since.
    Column("finished_at", UTCDateTime),
    # What its input file said before it ran (migration 0009): made once, kept.
    Column("estimate", JSON),
    PrimaryKeyConstraint("provider", "batch_id"),
    Index(
        "ix_batches_due", "next_poll_at", sqlite_where=NOT_FINISHED, postgresql_where=NOT_FINISHED
    ),
    Index(None, "status"),
    Index(None, "created_at"),  # a budget's window of finished batches (migration 0006)
    Index(None, "finished_at"),
)

# Rows that have ended, as a term no index serves: the status index holds every finished
# batch under four keys, and a planner (SQLite's, without statistics) that took it for
# "status IN (...)" would walk the whole history instead of the range of creation or
# end times the query is after.
ENDED = func.coalesce(batches.c.status, "").in_(sorted(TERMINAL))

batch_events = Table(
    "batch_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    # Null for daemon-wide events (safety_tripped, safety_resumed).
    Column("provider", String(64)),
    Column("batch_id", String(128)),
    Column("kind", String(32), nullable=False),
    Column("from_status", String(64)),
    Column("to_status", String(64)),
    Column("policy", String(64)),
    Column("detail", JSON),
    Index(None, "provider", "batch_id", "id"),
    Index(None, "batch_id", "id"),  # `events ID` without --provider
    Index(None, "kind", "at"),  # --kind, and retention by kind and age
    Index(None, "at"),
)

# What each poll that saw something new observed (migration 0007): enough to judge the
# batch again later with other policies or prices (replay). Thinned with age (retention).
batch_samples = Table(
    "batch_samples",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("provider", String(64), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("status", String(64)),
    *counts_and_tokens(),
    Index(None, "provider", "batch_id", "at"),
    Index(None, "at"),
)

state = Table(
    "watchdog_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON),
    Column("updated_at", UTCDateTime, nullable=False),
)

EVENT_KINDS = frozenset(str(kind) for kind in Kind)  # one list: events.Kind
