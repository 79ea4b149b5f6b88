"""List passes: which providers' list pages a tick reads (many batches due, or a
discovery pass due), one replica at a time per provider; what each page shows is
tracked (discovery) and its due batches claimed at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from watchdog.core.cadence import Cadence
from watchdog.core.events import Event, Kind
from watchdog.core.observe import Rules
from watchdog.core.policies import Discovery
from watchdog.core.rows import Tracked
from watchdog.daemon.record import Emitter
from watchdog.daemon.refresh import ListPass, Prefetched, Refresher, depth
from watchdog.storage.coordination import LIST_PASS, ListPassState
from watchdog.storage.store import Store

Claim = Callable[[list[tuple[str, str]]], Awaitable[list[Tracked]]]


class Lister:
    """Reads the providers' lists for a tick, holding each one's pass while it does."""

    def __init__(
        self,
        store: Store,
        refresher: Refresher,
        emitter: Emitter,
        *,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime],
        chunk: int,
    ) -> None:
        self.store, self.refresher, self.emitter = store, refresher, emitter
        self.owner, self.lease, self.clock, self.chunk = owner, lease, clock, chunk

    async def passes(
        self, cutoff: datetime, rules: Rules, cadence: Cadence, claim: Claim, elsewhere: set[str]
    ) -> AsyncIterator[tuple[list[Tracked], Prefetched]]:
        """Providers' list pages read a chunk at a time: the new batches each chunk shows
        tracked, and the due ones claimed at once (memory holds a chunk, not the list).
        What the pages miss is claimed and fetched afterwards. A provider another
        replica is paging joins ``elsewhere``."""
        passes = await self.store.coord.list_passes(self.owner, self.clock())
        elsewhere |= {provider for provider, held in passes.items() if held.elsewhere}
        for provider, wanted in (await self._plans(passes, rules, cadence)).items():
            if provider in elsewhere or not await self._hold(provider):
                elsewhere.add(provider)
                continue
            try:
                async for listed in self.refresher.pages(provider, wanted, self.chunk):
                    if not await self._hold(provider):  # ran past its hold: taken over
                        elsewhere.add(provider)
                        break
                    if listed.new:
                        found = await self.store.tracking.discover(provider, listed.new, cutoff)
                        self.emitter.tell(found)
                    if claimed := await claim(listed.keys()):
                        yield claimed, listed
            finally:
                await self._end(provider, wanted)

    async def elsewhere(self, known: set[str]) -> set[str]:
        """``known`` and every provider whose list another replica is paging now."""
        passes = await self.store.coord.list_passes(self.owner, self.clock())
        known |= {provider for provider, held in passes.items() if held.elsewhere}
        return known

    async def _end(self, provider: str, done: ListPass) -> None:
        """Give the provider's list pass back; a complete discovery pass is remembered
        (when, and the newest batch it saw: where the next one may stop)."""
        now, remember = self.clock(), None
        if done.discover is not None and done.complete and done.newest is not None:
            remember = {"discovered_at": now.isoformat(), "newest": done.newest}
            if done.oldest is not None and done.newest > done.oldest and done.listed > 100:
                # How densely the list holds batches: where a running one sits in it.
                remember["density"] = done.listed / (done.newest - done.oldest)
        if done.discover is not None and done.broken is not None:
            reason, why = done.broken
            detail = {"reason": reason, "why": why, "pages": done.pages}
            event = Event(now, provider, None, Kind.DISCOVERY_INCOMPLETE, detail=detail)
            await self.emitter.write([], [event])
        await self.store.coord.end_turn(LIST_PASS + provider, self.owner, now, remember)

    async def _plans(
        self, passes: Mapping[str, ListPassState], rules: Rules, cadence: Cadence
    ) -> dict[str, ListPass]:
        """Which providers' lists to read this tick, and for what: those with at least
        ``bulk_threshold`` batches due, and those discovering whose last complete pass
        is an interval old."""
        threshold, now = self.refresher.bulk_threshold, self.clock()
        due = await self.store.claims.due_ids(now, at_least=threshold) if threshold else {}
        plans = {p: ListPass(ids, oldest) for p, (ids, oldest) in self.refresher.bulk(due).items()}
        for provider, discovery in rules.discover.items():
            held = passes.get(provider, ListPassState())
            recent = held.discovered_at is not None and now - held.discovered_at < cadence.again
            if provider not in self.refresher.clients or recent:
                continue
            plan = plans.setdefault(provider, ListPass(set()))
            plan.discover = discovery
            plan.through = await self._through(provider, discovery, held, now)
        return plans

    async def _through(
        self, provider: str, discovery: Discovery, held: ListPassState, now: datetime
    ) -> float:
        """How far down its list a discovery pass reads: past what is new since the last
        complete pass (a minute's margin), and down to the running batches only where
        pages cost fewer requests than one GET each (refresh.depth) — never past the
        look-back."""
        floor = (now - discovery.created_within).timestamp()
        new_from = None if held.newest is None else held.newest - 60
        running = (await self.store.reads.running_created()).get(provider, [])
        return depth(floor, new_from, running, held.density, now.timestamp())

    async def _hold(self, provider: str) -> bool:
        """Take or renew this replica's list pass of ``provider``, for as long as a claim
        lasts: a replica that dies mid-pass holds it up no longer than its claims."""
        now = self.clock()
        until = now + self.lease
        return await self.store.coord.take_turn(LIST_PASS + provider, self.owner, now, until)
