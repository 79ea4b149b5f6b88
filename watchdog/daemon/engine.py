"""The tick, in one place: claim → refresh → observe → decide → record → act → settle.
Each step is a module of its own (store, refresh, observe, decisions, record, act,
cancels); the engine passes values between them. One batch's failure is its own."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog

from watchdog.clock import utcnow
from watchdog.core import cancels
from watchdog.core.budgets import Assessment, news, verdict
from watchdog.core.decisions import Candidate, Plan, candidate_of, plan
from watchdog.core.errors import PermanentError
from watchdog.core.events import Event, Kind
from watchdog.core.models import BatchObject
from watchdog.core.observe import Judging, Observation, Rules, failed, observe, slack
from watchdog.core.policies import Discovery, Verdict
from watchdog.core.rows import Tracked
from watchdog.daemon.act import send_cancels
from watchdog.daemon.budgetbook import BudgetBook
from watchdog.daemon.gate import Gate, open_gate, reserve, trip
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import Emitter, Listener
from watchdog.daemon.refresh import ListPass, Prefetched, Refresher, Result, depth, read_ahead
from watchdog.providers.breaker import Change as BreakerChange
from watchdog.providers.client import ProviderClient
from watchdog.storage.coordination import BUDGET_PASS, BUDGETS, LIST_PASS, ListPassState
from watchdog.storage.store import Store

__all__ = ["Engine", "Rules", "TickSummary"]
NOTHING_LISTED = Prefetched({})
# The wall clock moving this much more (or less) than the monotonic clock between two
# ticks is a step, not drift (NTP slews far slower).
CLOCK_STEP = timedelta(seconds=10)
log = structlog.get_logger("watchdog.engine")


@dataclass(slots=True)
class TickSummary:
    claimed: int = 0
    polled: int = 0
    poll_failed: int = 0
    status_changed: int = 0
    policy_matched: int = 0
    cancel_requested: int = 0
    cancel_succeeded: int = 0
    cancel_failed: int = 0
    cancel_held: int = 0
    safety_tripped: int = 0
    backlog: int = 0  # batches due when the tick ended (left for the next one)

    def count(self, committed: list[Event]) -> None:
        """The committed events' share of the summary."""
        for event in committed:
            if event.kind in COUNTED:  # each such kind is a field of the same name
                setattr(self, event.kind, getattr(self, event.kind) + 1)


COUNTED = frozenset(
    {
        Kind.STATUS_CHANGED,
        Kind.POLICY_MATCHED,
        Kind.CANCEL_REQUESTED,
        Kind.CANCEL_SUCCEEDED,
        Kind.CANCEL_FAILED,
        Kind.SAFETY_TRIPPED,
    }
)


class Engine:
    """Runs ticks; everything it needs is handed in, built once by the app."""

    def __init__(
        self,
        *,
        store: Store,
        clients: Mapping[str, ProviderClient],
        rules: Rules,
        poll_interval: timedelta,
        owner: str,
        clock: Callable[[], datetime] = utcnow,
        chunk: int = 500,
        lease: timedelta = timedelta(minutes=5),
        metrics: Metrics | None = None,
        on_events: Listener | None = None,
        bulk_threshold: int = 200,
        adaptive: bool = True,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.store, self.rules = store, rules
        self.poll_interval, self.owner, self.clock = poll_interval, owner, clock
        self.chunk, self.lease, self.adaptive = chunk, lease, adaptive
        self.metrics = metrics or Metrics()
        self.refresher = Refresher(clients, clock, bulk_threshold)
        self.emitter = Emitter(store, self.metrics, [on_events] if on_events else [])
        self.last_summary: TickSummary | None = None
        self.budget_book = BudgetBook()  # the tick's and the status page's
        self._budget_turn_until: datetime | None = None
        self._budget_memory: dict[str, Any] | None = None  # what the budgets last said
        self.on_progress: Callable[[], None] | None = None
        self._next_rules: Rules | None = None
        self._in_backlog = False
        self._skewed: dict[str, str] = {}  # provider -> why its cancels are held
        self._news: list[Event] = []  # providers going unavailable and back, as heard
        # Batches whose failed cancel came due again in this tick (their backoff ended):
        # a budget sends its cancel again only then, as a policy's is sent at that poll.
        self._retry_due: set[tuple[str, str]] = set()
        # The wall clock is checked against this one (the app's: time.monotonic) at each
        # tick: a step of the wall clock shows as the two moving apart.
        self._monotonic = monotonic
        self._last_clocks: tuple[datetime, float] | None = None
        self.clients = clients

    @property
    def clients(self) -> Mapping[str, ProviderClient]:
        return self.refresher.clients

    @clients.setter
    def clients(self, clients: Mapping[str, ProviderClient]) -> None:
        """The providers' clients; their breakers report to this engine."""
        self.refresher.clients = clients
        for name, client in clients.items():
            client.breaker.listener = partial(self._provider_changed, name)

    @property
    def bulk_threshold(self) -> int:
        return self.refresher.bulk_threshold

    @bulk_threshold.setter
    def bulk_threshold(self, value: int) -> None:
        self.refresher.bulk_threshold = value

    @property
    def on_events(self) -> Listener | None:
        return self.emitter.listeners[0] if self.emitter.listeners else None

    @on_events.setter
    def on_events(self, listener: Listener | None) -> None:
        self.emitter.listeners = [listener] if listener else []

    async def close(self) -> None:
        """At shutdown: give back the budgets' turn (kept from tick to tick), so that
        another replica takes it at once rather than when it would have lapsed."""
        if self._budget_turn_until is not None:
            self._budget_turn_until = None
            await self.store.coord.end_turn(BUDGET_PASS, self.owner, self.clock())

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
        self.store.check_file()
        await self._clock_step(cutoff)
        gate = await self._open_gate(cutoff)
        try:
            # The next chunk is claimed and fetched while this one is judged and written;
            # closed before the claims are given back, should this one fail.
            async with aclosing(read_ahead(self._fetched(cutoff, summary))) as chunks:
                async for claimed, results in chunks:
                    gate = await self._chunk(claimed, results, gate, summary, cutoff)
            await self._budgets(gate, summary, cutoff)
        except BaseException:
            await self._release_claims()
            raise
        await self._provider_changes()
        elapsed = time.perf_counter() - started
        await self._backlog(summary, elapsed)
        log.info(
            "tick_completed",
            duration_ms=round(elapsed * 1000, 1),
            dry_run=self.rules.dry_run,
            **asdict(summary),
        )
        self.last_summary = summary
        return summary

    async def _fetched(
        self, cutoff: datetime, summary: TickSummary
    ) -> AsyncGenerator[tuple[list[Tracked], list[Result]], None]:
        """Claim and refresh, a chunk at a time: first the batches the list pages show
        (providers with many due, or due a discovery pass), then every other due batch,
        one GET each."""
        elsewhere: set[str] = set()  # providers whose list another replica is paging
        async for claimed, listed in self._listed(cutoff, summary, elsewhere):
            yield claimed, await self.refresher.fetch_all(claimed, listed)
        # Checked again before each claim: a pass may have begun since this tick did.
        while claimed := await self._claim(cutoff, summary, skip=await self._elsewhere(elsewhere)):
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
        await self._check_clocks()  # with the Date headers of these very answers
        # Judged as of when the answers arrived; the next regular poll counts from the
        # tick's start (a tick longer than the interval leaves its batches due at once).
        now = self.clock()
        judging = replace(self._judging, tick_start=tick_start)  # one view for the chunk
        seen = [
            self._observe(t, r, now, judging, summary)
            for t, r in zip(claimed, results, strict=True)
        ]
        if forced:  # a budget's cancels, where no policy's is wanted already
            seen = [_forced(o, forced.get(o.key)) for o in seen]
        chosen, gate = await self._decide(seen, gate, now, summary)
        requested = {o.key: cancels.request(o, now, self.owner, self.lease) for o in chosen}
        seen = [requested.get(o.key, o) for o in seen]
        # Everything seen and cancel_requested are stored before any cancel goes out, and
        # only for rows this replica still holds: a lost lease means another one has them.
        written = await self.emitter.write(
            [o.change for o in seen], [e for o in seen for e in o.events], owner=self.owner
        )
        summary.count(written.events)
        sending = [o for o in requested.values() if o.key in written.rows]
        if sending:
            await self._act(sending, summary)
        if self.on_progress is not None:
            self.on_progress()
        return gate

    async def _budgets(self, gate: Gate, summary: TickSummary, cutoff: datetime) -> None:
        """Assess the budgets over every tracked batch (each replica, for its gauges and
        page); the replica holding the budgets' turn records what they say and cancels
        what they choose through the same decisions as a policy's cancels (dry run,
        exemptions, the limits, once only)."""
        budgets, now = self.rules.budgets, self.clock()
        if not budgets:
            return
        found = await self.budget_book.assess(self.store, self.rules, now)
        self.metrics.set_budgets(found)
        if await self._budget_turn(now):
            await self._act_on_budgets(found, gate, summary, cutoff)

    async def _budget_turn(self, now: datetime) -> bool:
        """Whether this replica holds the budgets' turn: kept from tick to tick (renewed
        once half its lease is gone, given back at shutdown), so that an idle tick does
        not write to hold it. While it is held, what the budgets last said is this
        replica's own: kept in memory, read again only on taking the turn."""
        held = self._budget_turn_until
        if held is not None and held - now > self.lease / 2:
            return True
        until = now + self.lease
        taken = await self.store.coord.take_turn(BUDGET_PASS, self.owner, now, until)
        if not taken or held is None:  # lost, or just taken: what was said is another's
            self._budget_memory = None
        self._budget_turn_until = until if taken else None
        return taken

    async def _act_on_budgets(
        self, found: list[Assessment], gate: Gate, summary: TickSummary, cutoff: datetime
    ) -> None:
        now = self.clock()
        memory = self._budget_memory
        if memory is None:
            memory = await self.store.coord.get_state(BUDGETS) or {}
        said = news(found, memory, now)
        if said.events or said.memory != memory:  # an idle tick writes nothing
            await self.store.coord.set_state(BUDGETS, said.memory, now, said.events)
            self.emitter.tell(said.events)
        self._budget_memory = said.memory
        # A chosen batch whose cancel failed waits for its backoff, like a policy's.
        waiting = said.backing_off - self._retry_due
        verdicts = {k: verdict(one) for k, one in said.condemned.items() if k not in waiting}
        if verdicts:
            await self._condemn(verdicts, gate, summary, cutoff)

    async def _condemn(
        self,
        verdicts: Mapping[tuple[str, str], Verdict],
        gate: Gate,
        summary: TickSummary,
        cutoff: datetime,
    ) -> None:
        """Claim the batches a budget chose (whenever they are due; one another replica
        holds is left to a later tick), look at them afresh, and cancel."""
        now = self.clock()
        keys, whenever = list(verdicts), now + timedelta(days=3650)
        claimed = await self.store.claims.claim_due(
            now, self.owner, self.lease, len(keys), due_by=whenever, only=keys
        )
        if claimed:
            summary.claimed += len(claimed)
            results = await self.refresher.fetch_all(claimed, NOTHING_LISTED)
            await self._chunk(claimed, results, gate, summary, cutoff, verdicts)

    async def _claim(
        self,
        cutoff: datetime,
        summary: TickSummary,
        only: list[tuple[str, str]] | None = None,
        skip: set[str] | None = None,
    ) -> list[Tracked]:
        limit = len(only) if only else self.chunk
        claimed = await self.store.claims.claim_due(
            self.clock(),
            self.owner,
            self.lease,
            limit,
            due_by=cutoff,
            only=only or (),
            skip=skip or (),
        )
        summary.claimed += len(claimed)
        return claimed

    async def _listed(
        self, cutoff: datetime, summary: TickSummary, elsewhere: set[str]
    ) -> AsyncIterator[tuple[list[Tracked], Prefetched]]:
        """Providers' list pages read a chunk at a time: the new batches each chunk shows
        tracked (discovery), and the due ones claimed at once (memory holds a chunk,
        not the list). What the pages miss is claimed and fetched afterwards. One
        replica pages a provider's list at a time; a provider another one is paging
        joins ``elsewhere``."""
        passes = await self.store.coord.list_passes(self.owner, self.clock())
        elsewhere |= {provider for provider, held in passes.items() if held.elsewhere}
        for provider, wanted in (await self._list_plans(passes)).items():
            if provider in elsewhere or not await self._hold_list(provider):
                elsewhere.add(provider)
                continue
            try:
                async for listed in self.refresher.pages(provider, wanted, self.chunk):
                    if not await self._hold_list(provider):  # ran past its hold: taken over
                        elsewhere.add(provider)
                        break
                    if listed.new:
                        self.emitter.tell(
                            await self.store.tracking.discover(provider, listed.new, cutoff)
                        )
                    if claimed := await self._claim(cutoff, summary, only=listed.keys()):
                        yield claimed, listed
            finally:
                await self._end_list(provider, wanted)

    async def _end_list(self, provider: str, done: ListPass) -> None:
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

    async def _list_plans(self, passes: Mapping[str, ListPassState]) -> dict[str, ListPass]:
        """Which providers' lists to read this tick, and for what: those with at least
        ``bulk_threshold`` batches due, and those discovering whose last complete pass
        is an interval old."""
        threshold, now = self.refresher.bulk_threshold, self.clock()
        due = await self.store.claims.due_ids(now, at_least=threshold) if threshold else {}
        plans = {p: ListPass(ids, oldest) for p, (ids, oldest) in self.refresher.bulk(due).items()}
        every = self.poll_interval - slack(self.poll_interval)
        for provider, discovery in self.rules.discover.items():
            held = passes.get(provider, ListPassState())
            recent = held.discovered_at is not None and now - held.discovered_at < every
            if provider not in self.clients or recent:
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

    async def next_due(self) -> datetime | None:
        """When the next batch this replica may take falls due: a provider whose list
        another replica is paging is that one's (waking up for it would only spin)."""
        now = self.clock()
        return await self.store.claims.next_due(now, skip=await self._elsewhere(set()))

    async def _elsewhere(self, known: set[str]) -> set[str]:
        passes = await self.store.coord.list_passes(self.owner, self.clock())
        known |= {provider for provider, held in passes.items() if held.elsewhere}
        return known

    async def _hold_list(self, provider: str) -> bool:
        """Take or renew this replica's list pass of ``provider``, for as long as a claim
        lasts: a replica that dies mid-pass holds it up no longer than its claims."""
        now = self.clock()
        return await self.store.coord.take_turn(
            LIST_PASS + provider, self.owner, now, now + self.lease
        )

    @property
    def _judging(self) -> Judging:
        return Judging(self.rules, self.poll_interval, self.adaptive)

    def _observe(
        self,
        tracked: Tracked,
        result: Result,
        now: datetime,
        judging: Judging,
        summary: TickSummary,
    ) -> Observation:
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

    async def _decide(
        self, seen: list[Observation], gate: Gate, now: datetime, summary: TickSummary
    ) -> tuple[list[Observation], Gate]:
        """The batches to cancel now (decisions.plan, then the hourly limit), and what
        the rest of the tick may still cancel."""
        wanted = [o for o in seen if o.verdict and o.verdict.action == "cancel"]
        decided = plan(
            [self._candidate(o, now) for o in wanted],
            dry_run=self.rules.dry_run,
            max_cancels=gate.allowed,
            alert_only=gate.alert_only,
        )
        await self._hourly_limit(decided, now)
        summary.cancel_held += len(decided.held)
        self._say_held(decided, seen)
        gate = Gate(gate.allowed - len(decided.cancel), gate.alert_only)
        if decided.capped:
            gate = await self._trip(decided, now, summary)
        by_key = {o.key: o for o in seen}
        return [by_key[(c.provider, c.batch_id)] for c in decided.cancel], gate

    def _candidate(self, obs: Observation, now: datetime) -> Candidate:
        assert obs.verdict is not None
        skewed = self._skewed.get(obs.after.view.provider)
        exempt = self.rules.safety.exempt_metadata
        return candidate_of(obs.after, obs.verdict.policy, exempt, now, skewed)

    @staticmethod
    def _say_held(decided: Plan, seen: list[Observation]) -> None:
        """Why a cancel is held: said once, when the policy first matches; later ticks
        only count it."""
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

    async def _hourly_limit(self, decided: Plan, now: datetime) -> None:
        """Take the planned cancels from the hourly budget all replicas share; the ones
        it does not grant are held back like the per-tick cap's (and trip the safety)."""
        granted = await reserve(self.store, self.rules.safety, len(decided.cancel), now)
        over, decided.cancel = decided.cancel[granted:], decided.cancel[:granted]
        limit = self.rules.safety.max_cancels_per_hour
        decided.held += [(c, f"hourly cancel limit ({limit}, all replicas) reached") for c in over]
        decided.capped += len(over)

    async def _open_gate(self, now: datetime) -> Gate:
        gate, resumed = await open_gate(self.store, self.rules.safety, now)
        if resumed is not None:
            self.emitter.tell([resumed])
        self.metrics.safety_tripped.set(gate.alert_only is not None)
        return gate

    async def _trip(self, decided: Plan, now: datetime, summary: TickSummary) -> Gate:
        limits, sending = self.rules.safety, len(decided.cancel)
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
        summary.count([event])
        self.metrics.safety_tripped.set(1)
        return Gate(0, "safety tripped: alert-only until resume")

    async def _act(self, sending: list[Observation], summary: TickSummary) -> None:
        """Send the cancels, then settle each from its answer (a refused one from a fresh
        GET). Fenced: a replica whose lease ran out during a long request writes
        nothing; the next holder settles the cancel from the provider's state."""
        batches = [o.after for o in sending]
        answers = await send_cancels(self.clients, batches, self.lease.total_seconds())
        now, judging = self.clock(), self._judging
        settled = [
            await self._settle(cancels.outcome(t, a, now, judging), now, judging)
            for t, a in zip(batches, answers, strict=True)
        ]
        written = await self.emitter.write(
            [d.change for d in settled], [e for d in settled for e in d.events], owner=self.owner
        )
        summary.count(written.events)

    async def _settle(
        self, done: cancels.Outcome, now: datetime, judging: Judging
    ) -> cancels.Outcome:
        if done.refused is not None:  # finished, it says: learn its state now
            result = await self.refresher.get(done.tracked)
            if isinstance(result, BatchObject):
                cancels.take_in(done, result, now, judging)
            cancels.after_refusal(done, now)
        return cancels.finish(done, now)

    async def _release_claims(self) -> None:
        """A failed tick gives its claims back at once: left leased, its batches would go
        unwatched for a whole lease while the next ticks claim nothing and look fine."""
        try:
            await self.store.claims.release(self.owner)
        except Exception as exc:  # the database that failed the tick may refuse this too
            log.warning("release_failed", error=" ".join(str(exc).split())[:200])

    async def _check_clocks(self) -> None:
        """Hold every cancel to a provider whose clock (its answers' Date header) is
        further from ours than ``max_clock_skew``: a host clock stepped a day forward
        must not cancel healthy batches through ``age_above``. Recorded (``clock_skew``)
        when it starts; logged when it ends."""
        limit, now, events = self.rules.safety.max_clock_skew, self.clock(), []
        for name, client in self.clients.items():
            offset = client.clock_offset
            off = limit is not None and offset is not None and abs(offset) > limit.total_seconds()
            if off and name not in self._skewed:
                assert offset is not None
                why = f"local clock is {-offset:+.0f}s off {name}'s (its Date header): not acting"
                self._skewed[name] = why
                detail = {"offset_s": offset, "note": why}
                events.append(Event(now, name, None, Kind.CLOCK_SKEW, detail=detail))
            elif not off and name in self._skewed:
                del self._skewed[name]
                log.warning("clock_skew_cleared", provider=name, offset_s=offset)
        if events:
            await self.emitter.write([], events)

    async def _clock_step(self, now: datetime) -> None:
        """A wall clock stepped back leaves every planned poll and lease that far in the
        future: a whole step of ticks would poll nothing. Noticed against the monotonic
        clock; the schedule is planned again from now (``clock_stepped``). A step
        forward only makes everything due at once; it is said, not undone."""
        if self._monotonic is None:
            return
        mono, last = self._monotonic(), self._last_clocks
        self._last_clocks = (now, mono)
        if last is None:
            return
        step = (now - last[0]).total_seconds() - (mono - last[1])
        if abs(step) < CLOCK_STEP.total_seconds():
            return
        replanned = 0
        if step < 0:
            replanned = await self.store.claims.replan(now, self.poll_interval, self.lease)
        detail = {"step_s": round(step, 1), "replanned": replanned}
        await self.emitter.write([], [Event(now, None, None, Kind.CLOCK_STEPPED, detail=detail)])

    def _provider_changed(self, name: str, change: BreakerChange, failures: int) -> None:
        """The breakers' listener: a provider going unavailable (circuit open) or back."""
        kind = Kind.PROVIDER_UNAVAILABLE if change == "unavailable" else Kind.PROVIDER_RECOVERED
        self._news.append(Event(self.clock(), name, None, kind, detail={"failures": failures}))

    async def _provider_changes(self) -> None:
        """Record what the breakers said during the tick."""
        news, self._news = self._news, []
        if news:
            await self.emitter.write([], news)
        for name, client in self.clients.items():
            self.metrics.provider_available.labels(name).set(client.breaker.available)

    async def _backlog(self, summary: TickSummary, elapsed: float) -> None:
        """Say when the daemon cannot keep up: the tick took longer than the interval,
        or batches were left overdue by more than half of it. A metric always; a
        ``backlog`` event when it starts; a warning every such tick after."""
        now = self.clock()
        due, oldest = await self.store.claims.backlog(now)
        lag = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        summary.backlog = due
        self.metrics.backlog.set(due)
        self.metrics.backlog_age.set(lag)
        interval = self.poll_interval.total_seconds()
        behind = due > 0 and (elapsed > interval or lag > interval / 2)
        numbers = {"due": due, "overdue_s": round(lag, 1), "tick_s": round(elapsed, 1)}
        if behind and not self._in_backlog:
            detail = numbers | {"poll_interval_s": interval}
            await self.emitter.write([], [Event(now, None, None, Kind.BACKLOG, detail=detail)])
        elif behind:
            log.warning("backlog", **numbers, poll_interval_s=interval)
        elif self._in_backlog:
            log.info("backlog_cleared", due=due)
        self._in_backlog = behind


def _forced(obs: Observation, wanted: Verdict | None) -> Observation:
    """A budget's verdict on a batch no policy wants cancelled already."""
    if wanted is None or not obs.ok or (obs.verdict and obs.verdict.action == "cancel"):
        return obs
    return replace(obs, verdict=wanted)


async def assess_budgets(store: Store, rules: Rules, now: datetime) -> list[Assessment]:
    """Every budget group of ``rules`` over the database as it is now (read-only), for
    one look (``budgets``, ``explain``): the daemon keeps its own book instead."""
    return await BudgetBook().assess(store, rules, now)
