"""What the replicas share in ``watchdog_state``: turns (a provider's list pass,
the budgets), the hourly cancel ledger, and the daemon-wide entries (the safety trip)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from watchdog.core.events import Event, Kind
from watchdog.storage.database import dialect_insert
from watchdog.storage.mapping import insert_events
from watchdog.storage.tables import (
    state,
)

CANCEL_LEDGER = "cancel_ledger"


LIST_PASS = "list_pass:"  # + provider: who pages its list now (watchdog_state)


BUDGET_PASS = "budget_pass"  # who assesses the budgets now


BUDGETS = "budgets"  # what the budgets last said, per group (budgets.news)


SAMPLES_THINNED = "samples_thinned"  # the last sample id retention has thinned
CANCEL_ASKS = "cancel_asks"  # "provider/batch_id" -> who asked, why, when (the API)


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


class Coordination:
    """The daemon-wide state the replicas share."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

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
            await insert_events(conn, list(events))

    async def reserve_cancels(self, want: int, per_hour: int, now: datetime) -> int:
        """Take up to ``want`` cancels from the hourly budget all replicas share, in one
        locked transaction (so two replicas cannot both spend the last ones): how many
        were granted. The ledger keeps the last hour's grants by time (one entry per
        tick that sent any), so no event scan is needed."""
        key = state.c.key == CANCEL_LEDGER
        async with self.engine.begin() as conn:
            ledger = _recent(await self._locked(conn, CANCEL_LEDGER, now), now)
            granted = max(0, min(want, per_hour - sum(ledger.values())))
            if granted:
                ledger[now.isoformat()] = ledger.get(now.isoformat(), 0) + granted
            await conn.execute(update(state).where(key).values(value=ledger, updated_at=now))
        return granted

    async def _locked(self, conn: AsyncConnection, key: str, now: datetime) -> dict[str, Any]:
        """The entry ``key`` (created empty if missing), locked until the transaction
        ends: what a replica reads here no other changes before it writes."""
        seed = {"key": key, "value": {}, "updated_at": now}
        await conn.execute(dialect_insert(self.engine)(state).values(seed).on_conflict_do_nothing())
        found = await conn.execute(
            select(state.c.value).where(state.c.key == key).with_for_update()
        )
        return dict(found.scalar() or {})

    async def ask_cancel(
        self, key: tuple[str, str], said: Mapping[str, Any], now: datetime
    ) -> Event:
        """Queue an operator's cancel of a batch for the next tick, which plans it as a
        policy's (dry run, exemptions, the limits, once only); the ``cancel_asked``
        event, committed with the ask."""
        event = Event(now, key[0], key[1], Kind.CANCEL_ASKED, detail=dict(said))
        async with self.engine.begin() as conn:
            asks = await self._locked(conn, CANCEL_ASKS, now)
            asks["/".join(key)] = dict(said) | {"at": now.isoformat()}
            where = state.c.key == CANCEL_ASKS
            await conn.execute(update(state).where(where).values(value=asks, updated_at=now))
            await insert_events(conn, [event])
        return event

    async def cancel_asks(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The operators' cancels still to be planned, by batch."""
        asks = await self.get_state(CANCEL_ASKS) or {}
        return {(p, b): v for k, v in asks.items() for p, _, b in [k.partition("/")]}

    async def drop_cancel_asks(self, keys: Iterable[tuple[str, str]], now: datetime) -> None:
        """Forget the asks a tick has planned (whatever the plan decided)."""
        gone = {"/".join(k) for k in keys}
        if not gone:
            return
        async with self.engine.begin() as conn:
            asks = await self._locked(conn, CANCEL_ASKS, now)
            kept = {k: v for k, v in asks.items() if k not in gone}
            where = state.c.key == CANCEL_ASKS
            await conn.execute(update(state).where(where).values(value=kept, updated_at=now))

    async def take_turn(self, key: str, owner: str, now: datetime, until: datetime) -> bool:
        """Hold the daemon-wide turn ``key`` (a provider's list pass, the budgets)
        until ``until``, or renew it: False when another replica holds it, so that one
        replica at a time does that work."""
        where = state.c.key == key
        async with self.engine.begin() as conn:
            entry = await self._locked(conn, key, now)
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
