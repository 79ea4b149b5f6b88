"""The tick, in one place: claim → refresh → observe → decide → record → act → settle.
Each step is a module of its own (listing, refresh, observe, gate, record, act,
budgeting, watch); the engine sequences them. One batch's failure is its own."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict
from datetime import datetime, timedelta
from functools import partial

import structlog

from watchdog.clock import utcnow
from watchdog.core import cancels
from watchdog.core.cadence import Cadence
from watchdog.core.errors import PermanentError
from watchdog.core.observe import Judging, Observation, Rules, failed, observe
from watchdog.core.policies import Verdict
from watchdog.core.rows import Tracked
from watchdog.daemon.act import cancel_all
from watchdog.daemon.asks import Asks
from watchdog.daemon.budgeting import Budgeting, forced_verdict
from watchdog.daemon.estimating import Estimator
from watchdog.daemon.gate import Gate, Guard
from watchdog.daemon.listing import Lister
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import Emitter, Listener
from watchdog.daemon.refresh import Prefetched, Refresher, Result, read_ahead
from watchdog.daemon.summary import TickSummary
from watchdog.daemon.watch import Watch
from watchdog.providers.client import ProviderClient
from watchdog.storage.store import Store

__all__ = ["Engine"]
NOTHING_LISTED = Prefetched({})
FOREVER = timedelta(days=3650)  # a forced batch is claimed whenever it is due
log = structlog.get_logger("watchdog.engine")


class Engine:
    """Runs ticks; everything it needs is handed in, built once by the app."""

    def __init__(
        self,
        *,
        store: Store,
        clients: Mapping[str, ProviderClient],
        rules: Rules,
        cadence: Cadence,
        owner: str,
        clock: Callable[[], datetime] = utcnow,
        chunk: int = 500,
        lease: timedelta = timedelta(minutes=5),
        metrics: Metrics | None = None,
        listeners: Sequence[Listener] = (),
        bulk_threshold: int = 200,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.store, self.rules, self.cadence = store, rules, cadence
        self.owner, self.clock, self.chunk, self.lease = owner, clock, chunk, lease
        self.metrics = metrics or Metrics()
        self.refresher = Refresher(clients, clock, bulk_threshold)
        self.emitter = Emitter(store, self.metrics, listeners)
        self.watch = Watch(
            store, self.emitter, self.metrics, clock=clock, monotonic=monotonic, lease=lease
        )
        self.lister = Lister(
            store, self.refresher, self.emitter, owner=owner, lease=lease, clock=clock, chunk=chunk
        )
        self.budgeting = Budgeting(
            store, self.emitter, self.metrics, owner=owner, lease=lease, clock=clock
        )
        self.guard = Guard(store, self.emitter, self.metrics, self.watch.skewed)
        self.asks = Asks(store, clock)
        self.estimator = Estimator(self.emitter, clock)
        self.last_summary: TickSummary | None = None
        self.on_progress: Callable[[], None] | None = None
        self._next_rules: Rules | None = None
        # Batches whose failed cancel came due again in this tick (their backoff ended):
        # a budget sends its cancel again only then, as a policy's is sent at that poll.
        self._retry_due: set[tuple[str, str]] = set()
        self.use_clients(clients)

    @property
    def clients(self) -> Mapping[str, ProviderClient]:
        return self.refresher.clients

    def use_clients(self, clients: Mapping[str, ProviderClient]) -> None:
        """Poll through these clients from now on; their breakers report to the watch."""
        self.refresher.clients = clients
        self.watch.listen_to(clients)

    def listen(self, listener: Listener) -> None:
        """Hand every committed event to ``listener`` too (notifications, tests)."""
        self.emitter.listeners.append(listener)

    async def close(self) -> None:
        """At shutdown: give back what this replica holds from tick to tick."""
        await self.estimator.close()
        await self.budgeting.close()

    def replace_rules(self, rules: Rules) -> None:
        """New policies and pricing, from the next tick on (never halfway through one)."""
        self._next_rules = rules

    async def tick(self) -> TickSummary:
        """Poll every batch due when the tick starts once, judge, act; one summary line.
        Batches polled early that fall due again meanwhile wait for the next tick, so a
        daemon that polls slower than batches fall due still finishes its ticks."""
        if self._next_rules is not None:
            self.rules, self._next_rules = self._next_rules, None
        started, summary, cutoff = time.perf_counter(), TickSummary(), self.clock()
        self._retry_due = set()
        self.estimator.begin(self.rules.estimate)
        self.store.check_file()
        await self.watch.clock_step(cutoff, self.cadence)
        gate = await self.guard.open(self.rules.safety, cutoff)
        try:
            # First: a batch the regular pass claimed would be judged without the ask.
            gate = await self._asked(gate, summary, cutoff)
            # The next chunk is claimed and fetched while this one is judged and written;
            # closed before the claims are given back, should this one fail.
            async with aclosing(read_ahead(self._fetched(cutoff, summary))) as chunks:
                async for claimed, results in chunks:
                    gate = await self._chunk(claimed, results, gate, summary, cutoff)
            await self._budgets(gate, summary, cutoff)
        except BaseException:
            await self._release_claims()
            raise
        await self.watch.provider_changes(self.clients)
        elapsed = time.perf_counter() - started
        summary.backlog = await self.watch.backlog(self.cadence, elapsed)
        log.info(
            "tick_completed",
            duration_ms=round(elapsed * 1000, 1),
            dry_run=self.rules.dry_run,
            **asdict(summary),
        )
        self.last_summary = summary
        return summary

    async def next_due(self) -> datetime | None:
        """When the next batch this replica may take falls due: a provider whose list
        another replica is paging is that one's (waking up for it would only spin)."""
        skip = await self.lister.elsewhere(set())
        return await self.store.claims.next_due(self.clock(), skip=skip)

    async def _fetched(
        self, cutoff: datetime, summary: TickSummary
    ) -> AsyncGenerator[tuple[list[Tracked], list[Result]], None]:
        """Claim and refresh a chunk at a time: first what the list pages show (providers
        with many due, or due a discovery pass), then every other due batch, one GET each."""
        elsewhere: set[str] = set()  # providers whose list another replica is paging
        claim = partial(self._claim, cutoff, summary)
        async for claimed, listed in self.lister.passes(
            cutoff, self.rules, self.cadence, claim, elsewhere
        ):
            yield claimed, await self.refresher.fetch_all(claimed, listed)
        # Checked again before each claim: a pass may have begun since this tick did.
        while claimed := await claim(skip=await self.lister.elsewhere(elsewhere)):
            yield claimed, await self.refresher.fetch_all(claimed, NOTHING_LISTED)
            if len(claimed) < self.chunk:
                break

    async def _chunk(
        self,
        claimed: list[Tracked],
        results: list[Result],
        gate: Gate,
        summary: TickSummary,
        tick_start: datetime,
        forced: Mapping[tuple[str, str], Verdict] | None = None,
    ) -> Gate:
        """One chunk of a tick; returns what the rest of the tick may still cancel."""
        self._retry_due |= {t.key for t in claimed if t.cancel_outcome == "failed"}
        # With the Date headers of these very answers.
        await self.watch.provider_clocks(self.clients, self.rules.safety.max_clock_skew)
        claimed = await self.estimator.attach(claimed, results, self.clients, self.rules)
        # Judged as of when the answers arrived; the next regular poll counts from the
        # tick's start (a tick longer than the interval leaves its batches due at once).
        now = self.clock()
        judging = Judging(self.rules, self.cadence, tick_start)  # one view for the chunk
        pairs = zip(claimed, results, strict=True)
        seen = [self._observe(t, r, now, judging, summary) for t, r in pairs]
        if forced:  # a budget's cancels, where no policy's is wanted already
            seen = [forced_verdict(o, forced.get(o.key)) for o in seen]
        chosen, gate, decided, tripped = await self.guard.decide(seen, gate, self.rules, now)
        summary.cancel_held += len(decided.held)
        summary.count([tripped] if tripped else [])
        requested = {o.key: cancels.request(o, now, self.owner, self.lease) for o in chosen}
        seen = [requested.get(o.key, o) for o in seen]
        # Everything seen and cancel_requested are stored before any cancel goes out, and
        # only for rows this replica still holds: a lost lease means another one has them.
        written = await self.emitter.write(
            [o.change for o in seen], [e for o in seen for e in o.events], owner=self.owner
        )
        summary.count(written.events)
        if sending := [o for o in requested.values() if o.key in written.rows]:
            await self._act(sending, summary)
        if self.on_progress is not None:
            self.on_progress()
        return gate

    async def _budgets(self, gate: Gate, summary: TickSummary, cutoff: datetime) -> None:
        """The budgets' choice, cancelled as a policy's (dry run, exemptions, limits, once)."""
        verdicts = await self.budgeting.assess(self.rules, self._retry_due)
        await self._force(verdicts, gate, summary, cutoff)

    async def _asked(self, gate: Gate, summary: TickSummary, cutoff: datetime) -> Gate:
        """The cancels operators asked for (the API), planned as a policy's."""
        if not (verdicts := await self.asks.verdicts()):
            return gate
        gate, claimed = await self._force(verdicts, gate, summary, cutoff)
        await self.asks.settle(verdicts, claimed)
        return gate

    async def _force(
        self,
        verdicts: Mapping[tuple[str, str], Verdict],
        gate: Gate,
        summary: TickSummary,
        cutoff: datetime,
    ) -> tuple[Gate, set[tuple[str, str]]]:
        """Claim these batches whenever due (another replica's wait), look at them afresh,
        judge them with these verdicts where no policy wants a cancel already: what the
        rest of the tick may still cancel, and the batches claimed."""
        if not verdicts:
            return gate, set()
        now, keys = self.clock(), list(verdicts)
        claimed = await self.store.claims.claim_due(
            now, self.owner, self.lease, len(keys), due_by=now + FOREVER, only=keys
        )
        if claimed:
            summary.claimed += len(claimed)
            results = await self.refresher.fetch_all(claimed, NOTHING_LISTED)
            gate = await self._chunk(claimed, results, gate, summary, cutoff, verdicts)
        return gate, {t.key for t in claimed}

    async def _claim(
        self,
        cutoff: datetime,
        summary: TickSummary,
        only: list[tuple[str, str]] | None = None,
        skip: set[str] | None = None,
    ) -> list[Tracked]:
        limit = len(only) if only else self.chunk
        claimed = await self.store.claims.claim_due(
            self.clock(), self.owner, self.lease, limit,
            due_by=cutoff, only=only or (), skip=skip or (),
        )  # fmt: skip
        summary.claimed += len(claimed)
        return claimed

    def _observe(
        self, tracked: Tracked, result: Result, now: datetime, judging: Judging,
        summary: TickSummary,
    ) -> Observation:  # fmt: skip
        """A batch whose answer trips a bug fails its own poll, never the tick."""
        try:
            obs = observe(tracked, result, now, judging)
        except Exception as exc:
            provider, batch_id = tracked.key
            log.exception("observe_crashed", batch_id=batch_id, provider=provider)
            error = PermanentError(f"internal error: {type(exc).__name__}: {exc}"[:300])
            obs = failed(tracked, error, now, judging)
        self.metrics.polls.labels(tracked.view.provider, "ok" if obs.ok else "failed").inc()
        if obs.ok:
            summary.polled += 1
        else:
            summary.poll_failed += 1
        return obs

    async def _act(self, sending: list[Observation], summary: TickSummary) -> None:
        """Send the cancels and settle them. Fenced: a replica whose lease ran out in a
        long request writes nothing; the next holder settles it from the provider's."""
        judging = Judging(self.rules, self.cadence)
        settled = await cancel_all(self.refresher, sending, self.lease, judging, self.clock)
        written = await self.emitter.write(
            [d.change for d in settled], [e for d in settled for e in d.events], owner=self.owner
        )
        summary.count(written.events)

    async def _release_claims(self) -> None:
        """A failed tick gives its claims back at once: left leased, its batches would go
        unwatched for a whole lease while the next ticks claim nothing and look fine."""
        try:
            await self.store.claims.release(self.owner)
        except Exception as exc:  # the database that failed the tick may refuse this too
            log.warning("release_failed", error=" ".join(str(exc).split())[:200])
