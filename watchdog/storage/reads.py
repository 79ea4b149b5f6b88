"""The read models: what budgets, the report, the page, ``list`` and the metrics read
of ``batches``, each through an index, never the whole history a row at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Float,
    case,
    cast,
    func,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from watchdog.core.estimates import Estimate
from watchdog.core.events import Kind
from watchdog.core.models import (
    BatchView,
    metadata_text,
)
from watchdog.core.rows import Listed, Spent, Tracked
from watchdog.storage.mapping import (
    FINISHED,
    LISTED,
    SPENDING,
    STREAM_ROWS,
    row_listed,
    row_spending,
    row_view,
)
from watchdog.storage.tables import (
    ENDED,
    NOT_FINISHED,
    batch_events,
    batches,
)


@dataclass(frozen=True, slots=True)
class BudgetChanges:
    """What changed for the budgets since they last looked."""

    running: list[Tracked]
    finished: list[tuple[BatchView, Any, datetime]]  # (the batch, its cost, when it ended)
    untracked: set[tuple[str, str]]


class Reads:
    """Bounded reads of ``batches`` for the budgets, report, page and metrics."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def report_rows(self, since: datetime) -> AsyncIterator[Spent]:
        """The batches created since ``since``, with what a spend report needs (through
        the created_at index; streamed)."""
        c = batches.c
        query = select(*(c[n] for n in Spent.__dataclass_fields__)).where(c.created_at >= since)
        async with self.engine.connect() as conn:
            async for row in await conn.stream(query.execution_options(yield_per=STREAM_ROWS)):
                values = row._asdict()
                values["estimate"] = Estimate.from_json(values["estimate"])
                yield Spent(**values | {"metadata": metadata_text(values["metadata"])})

    async def some_batches(self, limit: int, since: datetime) -> list[Listed]:
        """At most ``limit`` tracked batches for a glance: the running ones (through the
        due index), then the newest finished since ``since`` (a range of the creation
        index) — never the whole history."""
        c = batches.c
        async with self.engine.connect() as conn:
            running = await conn.execute(select(*LISTED).where(NOT_FINISHED).limit(limit))
            rows = list(running.mappings())
            if len(rows) < limit:
                finished = select(*LISTED).where(c.created_at >= since, ENDED)
                query = finished.order_by(c.created_at.desc()).limit(limit - len(rows))
                rows += (await conn.execute(query)).mappings()
        return [row_listed(row) for row in rows]

    async def batches_after(
        self, after: tuple[str, str] | None, limit: int, provider: str | None = None
    ) -> list[Listed]:
        """Up to ``limit`` tracked batches in key order (provider, batch id) after
        ``after``, of one provider or all: a range of the primary key, whatever the
        history (the API pages through them)."""
        c = batches.c
        query = select(*LISTED).order_by(c.provider, c.batch_id).limit(limit)
        if after is not None:
            query = query.where(tuple_(c.provider, c.batch_id) > after)
        if provider is not None:
            query = query.where(c.provider == provider)
        async with self.engine.connect() as conn:
            return [row_listed(row) for row in (await conn.execute(query)).mappings()]

    async def one(self, provider: str, batch_id: str) -> Listed | None:
        """One tracked batch by its key, or None."""
        c = batches.c
        query = select(*LISTED).where(c.provider == provider, c.batch_id == batch_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else row_listed(row)

    async def list_batches(self, status: str | None = None) -> list[Listed]:
        """Every tracked batch (``list``), oldest tracked first."""
        c = batches.c
        query = select(*LISTED).order_by(c.tracked_at, c.provider, c.batch_id)
        if status is not None:
            query = query.where(c.status == status)
        async with self.engine.connect() as conn:
            return [row_listed(row) for row in (await conn.execute(query)).mappings()]

    async def running(self) -> list[Tracked]:
        """The batches still to be polled (through the due index): what a budget may
        still choose, and whose projection moves."""
        async with self.engine.connect() as conn:
            return await self._running(conn)

    async def _running(self, conn: AsyncConnection) -> list[Tracked]:
        # Only what a budget reads (a third of a claim's columns: each costs per row).
        rows = (await conn.execute(select(*SPENDING).where(NOT_FINISHED))).mappings().all()
        return [row_spending(row) for row in rows]

    async def finished_created(self, since: datetime) -> AsyncIterator[tuple[BatchView, Any]]:
        """The finished batches created since ``since`` (through the creation index),
        streamed a chunk at a time with what a budget reads of them (what it matches and
        groups on, its cost): a budget's window of the past, read once."""
        c = batches.c
        names = ("provider", "batch_id", "status", "model", "metadata", "created_at", "cost_usd",
                 "labels")  # fmt: skip
        query = select(*(c[n] for n in names))
        query = query.where(c.created_at >= since, ENDED)
        async with self.engine.connect() as conn:
            stream = await conn.stream(query.execution_options(yield_per=STREAM_ROWS))
            async for part in stream.partitions():
                for provider, batch_id, status, model, meta, created, cost, labels in part:
                    view = BatchView(provider, batch_id, status, model, metadata_text(meta),
                                     created, labels=labels or None)  # fmt: skip
                    yield view, cost

    async def budget_changes(self, ended: datetime, untracked: datetime) -> BudgetChanges:
        """In one read: the running batches, those that ended after ``ended`` (through
        the finished_at index) and those untracked after ``untracked`` (the events' kind
        index) — what changed for the budgets, never their whole window."""
        c, e = batches.c, batch_events.c
        finished = select(*FINISHED, c.finished_at)
        finished = finished.where(c.finished_at > ended)  # set only as a batch ends
        gone = select(e.provider, e.batch_id).where(e.kind == Kind.UNTRACKED, e.at > untracked)
        async with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # One snapshot for the three reads: under READ COMMITTED a batch that a
                # replica ended between them was read as running and as ended, and its
                # cost counted twice (a budget over its limit that is not).
                await conn.execution_options(isolation_level="REPEATABLE READ")
            running = await self._running(conn)
            rows = (await conn.execute(finished)).mappings()
            ends = [(row_view(r), r["cost_usd"], r["finished_at"]) for r in rows]
            left = {(p, b) for p, b in await conn.execute(gone) if p and b}
        ended_keys = {(view.provider, view.batch_id) for view, _, _ in ends}
        running = [t for t in running if t.key not in ended_keys]  # never counted twice
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
