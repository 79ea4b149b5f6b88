"""The tick's side of ``batches``: claiming due batches under a lease, writing their
changes and events in one transaction, and what is due next."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from watchdog.core.events import Event
from watchdog.core.rows import Change, Tracked
from watchdog.storage.mapping import (
    CLAIMED,
    bulk_update,
    columns,
    due_terms,
    insert_events,
    keyed,
    row_tracked,
    sample_row,
)
from watchdog.storage.tables import (
    NOT_FINISHED,
    batch_samples,
    batches,
)


class Claims:
    """Claiming, writing and releasing the batches a tick polls."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

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
        narrowed = [keyed(only)] if only else []
        if skipped := sorted(skip):
            narrowed.append(c.provider.not_in(skipped))
        due = (
            select(c.provider, c.batch_id)
            .where(*due_terms(now, due_by), *narrowed)
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
        return [row_tracked(row) for row in rows]

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
        query = select(func.count(), func.min(batches.c.next_poll_at)).where(*due_terms(now))
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
        enough = select(c.batch_id).where(*due_terms(now)).limit(at_least).subquery()
        query = select(c.provider, c.batch_id, c.created_at).where(*due_terms(now))
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
                await conn.execute(bulk_update(names), rows)
            lost = set(wanted) - written
            kept = [e for e in events if e.key not in lost]
            await insert_events(conn, kept)
            samples = [sample_row(c, wanted[c.key]) for c in changes if c.key in written]
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
            .where(c.lease_owner == owner, keyed(keys))
            .with_for_update()  # nobody takes them over before this transaction commits
        )
        return {(p, b) for p, b in await conn.execute(query)}

    async def release(self, owner: str | None) -> None:
        """Give up this owner's leases (at shutdown), or everyone's (None)."""
        query = update(batches).values(lease_owner=None, lease_expires_at=None)
        if owner is None:
            query = query.where(batches.c.lease_owner.is_not(None))
        else:
            query = query.where(batches.c.lease_owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(query)

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
