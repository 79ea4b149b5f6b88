"""The journal: ``batch_events`` and ``batch_samples`` — reading them (events,
replay's history, report's cancels) and pruning and thinning them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from watchdog.core.events import Kind
from watchdog.core.rows import Tracked
from watchdog.storage.coordination import SAMPLES_THINNED, Coordination
from watchdog.storage.mapping import CLAIMED, SAMPLED, STREAM_ROWS, key_of, row_tracked, rows_of
from watchdog.storage.tables import (
    batch_events,
    batch_samples,
    batches,
)


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


class Journal:
    """The events and samples: read, pruned and thinned."""

    def __init__(self, engine: AsyncEngine, coord: Coordination) -> None:
        self.engine = engine
        self.coord = coord

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

    async def samples_of(
        self, provider: str, batch_id: str, limit: int = 2000
    ) -> list[dict[str, Any]]:
        """One batch's samples (what each poll that saw something new observed), oldest
        first, the newest ``limit`` of them (through the (provider, batch_id, at) index)."""
        s = batch_samples.c
        query = (
            select(s.at, *(s[name] for name in SAMPLED))
            .where(s.provider == provider, s.batch_id == batch_id)
            .order_by(s.at.desc(), s.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings()]
        return rows[::-1]

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
            samples = rows_of(stream.mappings().partitions())  # a chunk at a time
            pending = await anext(samples, None)
            batch_rows = (await conn.stream(rows.execution_options(**options))).mappings()
            async for part in batch_rows.partitions():
                for row in part:
                    tracked, mine = row_tracked(row), []
                    while pending is not None and key_of(pending) <= tracked.key:
                        if key_of(pending) == tracked.key:
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
        s, cursor = batch_samples.c, await self.coord.get_state(SAMPLES_THINNED) or {}
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
            await self.coord.set_state(SAMPLES_THINNED, {"id": rows[-1][0]}, rows[-1][3])
        return len(rows)
