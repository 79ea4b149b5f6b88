"""Which batches are tracked: track, untrack, discovery's additions, exemptions, and
looking one up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from watchdog.core.durations import iso
from watchdog.core.estimates import Estimate
from watchdog.core.events import Event, Kind
from watchdog.core.rows import Tracked
from watchdog.storage.database import dialect_insert
from watchdog.storage.mapping import CLAIMED, insert_events, keyed, row_tracked
from watchdog.storage.tables import (
    batch_events,
    batches,
)


class Tracking:
    """Adding, removing, silencing and finding tracked batches."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def track(
        self,
        provider: str,
        batch_id: str,
        labels: Mapping[str, str],
        now: datetime,
        said: Mapping[str, Any] | None = None,
    ) -> bool:
        """Start tracking; False (and nothing written) when it is tracked already.
        ``said`` (who asked and why: actor, reason) goes into the event."""
        row = {"provider": provider, "batch_id": batch_id, "tracked_at": now}
        # One statement that tolerates a concurrent tracker of the same id.
        query = dialect_insert(self.engine)(batches).values(**row, labels=dict(labels) or None)
        async with self.engine.begin() as conn:
            added = await conn.execute(query.on_conflict_do_nothing().returning(batches.c.batch_id))
            if added.first() is None:
                return False
            detail = dict(said) if said else None
            await insert_events(conn, [Event(now, provider, batch_id, Kind.TRACKED, detail=detail)])
        return True

    async def set_estimate(
        self, key: tuple[str, str], estimate: Estimate, events: Sequence[Event]
    ) -> bool:
        """Keep a batch's estimate and its events, unless one that needs no more reading
        is there already (another replica's): False then, and nothing written."""
        where = keyed([key])
        async with self.engine.begin() as conn:
            query = select(batches.c.estimate).where(where).with_for_update()
            row = (await conn.execute(query)).first()
            held = None if row is None else Estimate.from_json(row[0])
            if row is None or (held is not None and held.settled):
                return False
            await conn.execute(update(batches).where(where).values(estimate=estimate.as_json()))
            await insert_events(conn, list(events))
        return True

    async def untrack(
        self,
        batch_id: str,
        provider: str | None,
        now: datetime,
        said: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Stop tracking (events stay); the providers it was removed from."""
        where = _by_id(batch_id, provider)
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(select(batches.c.provider, batches.c.status).where(where))
            ).all()
            await conn.execute(batches.delete().where(where))
            detail = dict(said) if said else None
            events = [Event(now, p, batch_id, Kind.UNTRACKED, from_status=s, detail=detail)
                      for p, s in rows]  # fmt: skip
            await insert_events(conn, events)
        return [p for p, _ in rows]

    async def exempt(
        self,
        batch_id: str,
        provider: str | None,
        until: datetime | None,
        reason: str | None,
        now: datetime,
        said: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Silence (``until`` set) or unsilence (None) a batch; the providers it applied to."""
        where = _by_id(batch_id, provider)
        kind = Kind.EXEMPTED if until is not None else Kind.UNEXEMPTED
        async with self.engine.begin() as conn:
            rows = (await conn.execute(select(batches.c.provider).where(where))).all()
            values: dict[str, Any] = {"exempt_until": until, "exempt_reason": reason}
            if until is None:  # lifting a silence: judge the batch again at the next tick
                values["next_poll_at"] = None
            await conn.execute(update(batches).where(where).values(**values))
            detail = {"until": iso(until), "reason": reason} if until else None
            if said:
                detail = (detail or {}) | dict(said)
            await insert_events(
                conn, [Event(now, p, batch_id, kind, detail=detail) for (p,) in rows]
            )
        return [p for (p,) in rows]

    async def discover(self, provider: str, batch_ids: Sequence[str], now: datetime) -> list[Event]:
        """Start tracking those of ``batch_ids`` that are neither tracked nor were ever
        untracked (an untrack sticks), each with a ``tracked`` event (via discovery):
        the events, committed."""
        c, e = batches.c, batch_events.c
        if not batch_ids:
            return []
        async with self.engine.begin() as conn:
            query = select(c.batch_id).where(keyed((provider, b) for b in batch_ids))
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
            query = dialect_insert(self.engine)(batches).values(rows).on_conflict_do_nothing()
            added = [b for (b,) in await conn.execute(query.returning(c.batch_id))]
            detail = {"via": "discovery"}
            events = [Event(now, provider, b, Kind.TRACKED, detail=detail) for b in added]
            await insert_events(conn, events)
        return events

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
        return [(row_tracked(row), row["next_poll_at"]) for row in rows]


def _by_id(batch_id: str, provider: str | None) -> ColumnElement[bool]:
    """A batch by its id, at one provider or at each that has one by that id."""
    where = batches.c.batch_id == batch_id
    return where if provider is None else where & (batches.c.provider == provider)
