"""Blast-radius limits: how many cancels a tick may send (per tick and per hour), and
the trip that switches the daemon to alert-only until `resume` or the cool-down. The
state lives in the database, so every replica honours one trip."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from watchdog.core.config import SafetySettings
from watchdog.core.decisions import Candidate, Plan, candidate_of, plan
from watchdog.core.events import Event, Kind
from watchdog.core.observe import Observation, Rules
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import Emitter
from watchdog.storage.store import Store

KEY = "safety"
log = structlog.get_logger("watchdog.engine")


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


async def resume(
    store: Store, now: datetime, *, by: str, said: Mapping[str, Any] | None = None
) -> Event | None:
    """End a trip: the committed ``safety_resumed`` event (``said``: who asked and why);
    None when there was none."""
    if await store.coord.get_state(KEY) is None:
        return None
    event = Event(now, None, None, Kind.SAFETY_RESUMED, detail={"by": by} | dict(said or {}))
    await store.coord.set_state(KEY, None, now, [event])
    return event


async def status(store: Store) -> dict[str, Any] | None:
    return await store.coord.get_state(KEY)


class Guard:
    """Between deciding and acting: which of a tick's wanted cancels go out (the plan:
    dry run, exemptions, held providers, the per-tick and the shared hourly limits),
    and the trip when the limits are hit."""

    def __init__(
        self, store: Store, emitter: Emitter, metrics: Metrics, skewed: dict[str, str]
    ) -> None:
        self.store, self.emitter, self.metrics = store, emitter, metrics
        self.skewed = skewed  # provider -> why its cancels are held (the watch keeps it)

    async def open(self, limits: SafetySettings, now: datetime) -> Gate:
        gate, resumed = await open_gate(self.store, limits, now)
        if resumed is not None:
            self.emitter.tell([resumed])
        self.metrics.safety_tripped.set(gate.alert_only is not None)
        return gate

    async def decide(
        self, seen: list[Observation], gate: Gate, rules: Rules, now: datetime
    ) -> tuple[list[Observation], Gate, Plan, Event | None]:
        """The batches to cancel now, what the rest of the tick may still cancel, the
        plan (for its held ones) and the trip's event, if this tripped the safety."""
        wanted = [o for o in seen if o.verdict and o.verdict.action == "cancel"]
        exempt = rules.safety.exempt_metadata
        decided = plan(
            [self._candidate(o, exempt, now) for o in wanted],
            dry_run=rules.dry_run,
            max_cancels=gate.allowed,
            alert_only=gate.alert_only,
        )
        await self._hourly_limit(decided, rules.safety, now)
        _say_held(decided, seen)
        gate, tripped = Gate(gate.allowed - len(decided.cancel), gate.alert_only), None
        if decided.capped:
            gate, tripped = await self._trip(decided, rules.safety, now)
        by_key = {o.key: o for o in seen}
        return [by_key[(c.provider, c.batch_id)] for c in decided.cancel], gate, decided, tripped

    def _candidate(self, obs: Observation, exempt: dict[str, str], now: datetime) -> Candidate:
        assert obs.verdict is not None
        skewed = self.skewed.get(obs.after.view.provider)
        return candidate_of(obs.after, obs.verdict.policy, exempt, now, skewed)

    async def _hourly_limit(self, decided: Plan, limits: SafetySettings, now: datetime) -> None:
        """Take the planned cancels from the hourly budget all replicas share; the ones
        it does not grant are held back like the per-tick cap's (and trip the safety)."""
        granted = await reserve(self.store, limits, len(decided.cancel), now)
        over, decided.cancel = decided.cancel[granted:], decided.cancel[:granted]
        limit = limits.max_cancels_per_hour
        decided.held += [(c, f"hourly cancel limit ({limit}, all replicas) reached") for c in over]
        decided.capped += len(over)

    async def _trip(
        self, decided: Plan, limits: SafetySettings, now: datetime
    ) -> tuple[Gate, Event]:
        sending = len(decided.cancel)
        event = await trip(
            self.store,
            now,
            would_cancel=sending + decided.capped,
            cancelled=sending,
            held=decided.capped,
            max_cancels_per_tick=limits.max_cancels_per_tick,
            max_cancels_per_hour=limits.max_cancels_per_hour,
        )
        self.emitter.tell([event])
        self.metrics.safety_tripped.set(1)
        return Gate(0, "safety tripped: alert-only until resume"), event


def _say_held(decided: Plan, seen: list[Observation]) -> None:
    """Why a cancel is held: said once, when the policy first matches; later ticks only
    count it."""
    fresh = {e.key for o in seen for e in o.events if e.kind == Kind.POLICY_MATCHED}
    for candidate, reason in decided.held:
        key = (candidate.provider, candidate.batch_id)
        (log.info if key in fresh else log.debug)(
            "cancel_held",
            batch_id=candidate.batch_id,
            provider=candidate.provider,
            policy=candidate.policy,
            reason=reason,
        )
