"""Rows to values and back: the columns a wire object or a Change sets, what a claim
reads, the shared WHERE terms and bulk statements of the repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    TextClause,
    Update,
    and_,
    bindparam,
    insert,
    or_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from watchdog.core.estimates import Estimate
from watchdog.core.events import Event
from watchdog.core.models import (
    BatchObject,
    BatchView,
    Counts,
    Tokens,
    from_unix,
    metadata_text,
)
from watchdog.core.rows import Change, Listed, Tracked
from watchdog.storage.tables import (
    COUNTS_AND_TOKENS,
    NOT_FINISHED,
    batch_events,
    batches,
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


STREAM_ROWS = 1000  # rows fetched at a time when streaming


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


def sample_row(change: Change, values: Mapping[str, Any]) -> dict[str, Any] | None:
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
          *COUNTS_AND_TOKENS, "cost_usd", "labels")  # fmt: skip


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
        "estimate",
    )
)


# What ``list`` and the page show: a claim's columns, the labels and the next poll.
LISTED = (*CLAIMED, batches.c.next_poll_at)  # the labels are among the claim's


def row_listed(row: Mapping[Any, Any]) -> Listed:
    return Listed(row_tracked(row), row["metadata"], row["labels"], row["next_poll_at"])


def row_view(row: Mapping[Any, Any]) -> BatchView:
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
        labels=row["labels"] or None,
    )


# What a running batch is to a budget: its view, cost, cancel and silence.
SPENDING = (
    *FINISHED,
    *(batches.c[n] for n in ("cancel_outcome", "cancel_attempts", "exempt_until", "exempt_reason",
                             "estimate")),
)  # fmt: skip


def row_spending(row: Mapping[Any, Any]) -> Tracked:
    """A running batch as a budget reads it (the rest of a Tracked left empty)."""
    return Tracked(
        view=row_view(row),
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
        estimate=Estimate.from_json(row["estimate"]),
    )


async def rows_of(parts: AsyncIterator[Sequence[Any]]) -> AsyncIterator[Any]:
    """The rows of a stream read a chunk at a time (one switch into the driver a
    chunk, not a row)."""
    async for part in parts:
        for row in part:
            yield row


def key_of(row: Mapping[Any, Any]) -> tuple[str, str]:
    return (row["provider"], row["batch_id"])


def row_tracked(row: Mapping[Any, Any]) -> Tracked:
    return Tracked(
        view=row_view(row),
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
        estimate=Estimate.from_json(row["estimate"]),
    )


def due_terms(
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


def keyed(keys: Iterable[tuple[str, str]]) -> ColumnElement[bool]:
    """These batches: per provider, ``batch_id IN (…)`` — a primary-key lookup on both
    databases (a row-value IN of pairs makes SQLite scan the whole table)."""
    by_provider: dict[str, list[str]] = {}
    for provider, batch_id in keys:
        by_provider.setdefault(provider, []).append(batch_id)
    c = batches.c
    return or_(*(and_(c.provider == p, c.batch_id.in_(ids)) for p, ids in by_provider.items()))


@lru_cache(maxsize=64)
def bulk_update(columns: tuple[str, ...]) -> Update:
    """One UPDATE for every row that sets these columns (an executemany)."""
    c = batches.c
    return (
        update(batches)
        .where(c.provider == bindparam("k_provider"), c.batch_id == bindparam("k_batch_id"))
        .values({name: bindparam(f"v_{name}", type_=c[name].type) for name in columns})
    )


def event_row(item: Event) -> dict[str, Any]:
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


async def insert_events(conn: AsyncConnection, events: list[Event]) -> None:
    if events:
        await conn.execute(insert(batch_events), [event_row(e) for e in events])
