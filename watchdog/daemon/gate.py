"""Blast-radius limits: how many cancels a tick may send (per tick and per hour), and
the trip that switches the daemon to alert-only until `resume` or the cool-down. The
state lives in the database, so every replica honours one trip."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from watchdog.core.events import Event, Kind
from watchdog.core.safety import SafetySettings
from watchdog.storage.store import Store

KEY = "safety"


@dataclass(frozen=True, slots=True)
class Gate:
    """What this tick may do: cancel up to ``allowed``, or nothing (``alert_only``)."""

    allowed: int
    alert_only: str | None = None


def cooled_down(tripped_at: datetime, cool_down: timedelta | None, now: datetime) -> bool:
    return cool_down is not None and now >= tripped_at + cool_down


async def open_gate(
    store: Store, limits: SafetySettings, now: datetime
) -> tuple[Gate, Event | None]:
    """The gate for a tick starting now (the per-tick limit; the hourly one is taken from
    the shared ledger as cancels are sent), and the ``safety_resumed`` event when a trip
    whose cool-down has passed ends here."""
    tripped = await store.coord.get_state(KEY)
    if tripped is None:
        return Gate(limits.max_cancels_per_tick), None
    at = datetime.fromisoformat(tripped["tripped_at"])
    if not cooled_down(at, limits.cool_down, now):
        return Gate(0, f"safety tripped at {tripped['tripped_at']}: alert-only until resume"), None
    return Gate(limits.max_cancels_per_tick), await resume(store, now, by="cool_down")


async def reserve(store: Store, limits: SafetySettings, want: int, now: datetime) -> int:
    """How many of ``want`` cancels the hourly limit, shared by all replicas, allows."""
    if want <= 0:
        return 0
    return await store.coord.reserve_cancels(want, limits.max_cancels_per_hour, now)


async def trip(store: Store, now: datetime, **numbers: Any) -> Event:
    """Switch every replica to alert-only; the committed ``safety_tripped`` event."""
    value = {"tripped_at": now.isoformat(), **numbers}
    note = "alert-only until `batch-watchdog resume`"
    event = Event(now, None, None, Kind.SAFETY_TRIPPED, detail={**numbers, "note": note})
    await store.coord.set_state(KEY, value, now, [event])
    return event


async def resume(store: Store, now: datetime, *, by: str) -> Event | None:
    """End a trip: the committed ``safety_resumed`` event; None when there was none."""
    if await store.coord.get_state(KEY) is None:
        return None
    event = Event(now, None, None, Kind.SAFETY_RESUMED, detail={"by": by})
    await store.coord.set_state(KEY, None, now, [event])
    return event


async def status(store: Store) -> dict[str, Any] | None:
    return await store.coord.get_state(KEY)
