"""One tick: claim the due batches, refresh them from their providers, record what
changed, judge them against the policies, plan and send the cancels, reschedule.
A failure on one batch never costs the others their tick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from watchdog.decisions import Answer, Candidate, Plan, Settled, exemption, plan, settle
from watchdog.metrics import Metrics
from watchdog.models import (
    ACTIVE,
    CANCELLING,
    TERMINAL,
    BatchObject,
    BatchView,
    InvalidBatchId,
    implausible,
    is_unknown_status,
    validate_batch_id,
    view_of,
)
from watchdog.policies import Facts, History, Policy, Verdict, evaluate, time_triggers
from watchdog.pricing import Price, batch_cost, projected_cost, seconds_to_cross
from watchdog.providers import (
    CancelRefused,
    PermanentError,
    ProviderClient,
    ProviderError,
    TemporaryError,
)
from watchdog.safety import Gate, open_gate, reserve, trip
from watchdog.settings import SafetySettings
from watchdog.store import Event, RowUpdate, Store, Tracked, wire_columns

log = structlog.get_logger("watchdog.engine")


ADAPTIVE_MARGIN = timedelta(seconds=1)
LEASE_SHARE_FOR_CANCELS = 0.8  # of lease_duration: a cancel call ends within it


def _older(batch: BatchObject, than: datetime | None) -> bool:
    """Created before ``than``: the list (newest first) is past every due batch."""
    return than is not None and batch.created_at is not None and batch.created_at < than.timestamp()


def utcnow() -> datetime:
    return datetime.now(UTC)


def _answer(answer: BatchObject | ProviderError) -> Answer:
    """A cancel's answer in the terms of the pure decision (decisions.settle)."""
    if isinstance(answer, BatchObject):
        return Answer(status=answer.status)
    if isinstance(answer, TemporaryError):
        return Answer(
            http_status=answer.status,
            temporary=True,
            unsent=answer.unsent,
            retry_after=answer.retry_after,
        )
    return Answer(http_status=answer.status, refused=isinstance(answer, CancelRefused))


def usd(amount: Decimal | None) -> float | None:
    """An amount for an event's JSON detail: to the micro-dollar, a number that prints
    exactly (the table columns keep the full decimal)."""
    return None if amount is None else float(round(amount, 6))


@dataclass(frozen=True, slots=True)
class Rules:
    """What the daemon judges by; swapped whole when the config is reloaded."""

    policies: Sequence[Policy]
    pricing: Sequence[Price]
    dry_run: bool = False
    safety: SafetySettings = field(default_factory=SafetySettings)


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


@dataclass(slots=True)
class Recorder:
    """Collects events for the store and logs each one under the same name."""

    clock: Callable[[], datetime]
    summary: TickSummary
    events: list[Event] = field(default_factory=list)

    def add(
        self,
        tracked: Tracked,
        kind: str,
        *,
        from_status: str | None = None,
        to_status: str | None = None,
        policy: str | None = None,
        level: str = "info",
        **detail: Any,
    ) -> None:
        provider, batch_id = tracked.key
        self.events.append(
            Event(self.clock(), provider, batch_id, kind, from_status, to_status, policy, detail)
        )
        if hasattr(self.summary, kind):
            setattr(self.summary, kind, getattr(self.summary, kind) + 1)
        getattr(log, level)(
            kind,
            batch_id=batch_id,
            provider=provider,
            policy=policy,
            from_status=from_status,
            to_status=to_status,
            **detail,
        )


@dataclass(slots=True)
class Work:
    """One batch's passage through a tick."""

    tracked: Tracked
    update: RowUpdate
    verdict: Verdict | None = None
    cost: Decimal | None = None


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
        on_events: Callable[[list[Event]], None] | None = None,
        bulk_threshold: int = 200,
        adaptive: bool = True,
    ) -> None:
        self.store = store
        self.clients = clients
        self.rules = rules
        self.poll_interval = poll_interval
        self.owner = owner
        self.clock = clock
        self.chunk = chunk
        self.lease = lease
        self.metrics = metrics or Metrics()
        self.on_events = on_events
        self.bulk_threshold = bulk_threshold
        self.adaptive = adaptive
        # Bulk-refresh answers, each with when it was read: used once, never after
        # something newer about the batch was learned.
        self._prefetched: dict[tuple[str, str], tuple[BatchObject, datetime]] = {}
        self.last_summary: TickSummary | None = None
        self._next_rules: Rules | None = None
        self._in_backlog = False
        self._skewed: dict[str, str] = {}  # provider -> why its cancels are held
        self.on_progress: Callable[[], None] | None = None

    def replace_rules(self, rules: Rules) -> None:
        """New policies and pricing, from the next tick on (never halfway through one)."""
        self._next_rules = rules

    async def tick(self) -> TickSummary:
        """Poll every due batch once, judge, act; log one summary line."""
        if self._next_rules is not None:
            self.rules, self._next_rules = self._next_rules, None
        started = time.perf_counter()
        summary = TickSummary()
        # A tick polls what was due when it started, and nothing more: batches it polled
        # early that fall due again meanwhile wait for the next tick, so a daemon that
        # polls slower than batches fall due still finishes its ticks (and says so).
        cutoff = self.clock()
        self.store.check_file()
        gate = await open_gate(self.store, self.rules.safety, cutoff)
        self.metrics.safety_tripped.set(gate.alert_only is not None)
        self._prefetched = await self._bulk_refresh()
        try:
            while True:
                now = self.clock()
                claimed = await self.store.claim_due(
                    now, self.owner, self.lease, self.chunk, due_by=cutoff
                )
                summary.claimed += len(claimed)
                if claimed:
                    gate = await self._process(claimed, summary, gate)
                    if self.on_progress is not None:
                        self.on_progress()
                if len(claimed) < self.chunk:
                    break
        except BaseException:
            await self._release_claims()
            raise
        finally:
            self._prefetched = {}
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

    async def _release_claims(self) -> None:
        """A failed tick gives its claims back at once: left leased, its batches would go
        unwatched for a whole lease while the next ticks claim nothing and look fine."""
        try:
            await self.store.release(self.owner)
        except Exception as exc:  # the database that failed the tick may refuse this too
            log.warning("release_failed", error=" ".join(str(exc).split())[:200])

    async def _backlog(self, summary: TickSummary, elapsed: float) -> None:
        """Say when the daemon cannot keep up: the tick took longer than the interval,
        or batches were left overdue by more than half of it. A metric always; a warning
        every such tick; a ``backlog`` event when it starts."""
        now = self.clock()
        due, oldest = await self.store.backlog(now)
        lag = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        summary.backlog = due
        self.metrics.backlog.set(due)
        self.metrics.backlog_age.set(lag)
        interval = self.poll_interval.total_seconds()
        behind = due > 0 and (elapsed > interval or lag > interval / 2)
        if behind:
            numbers = {"due": due, "overdue_s": round(lag, 1), "tick_s": round(elapsed, 1)}
            log.warning("backlog", **numbers, poll_interval_s=interval)
            if not self._in_backlog:
                await self.store.apply([], [Event(now, None, None, "backlog", detail=numbers)])
        elif self._in_backlog:
            log.info("backlog_cleared", due=due)
        self._in_backlog = behind

    async def _process(self, claimed: list[Tracked], summary: TickSummary, gate: Gate) -> Gate:
        """One chunk of a tick; returns what the rest of the tick may still cancel."""
        rec = Recorder(self.clock, summary)
        results = await asyncio.gather(*(self._fetch(t) for t in claimed))
        await self._check_clocks()  # with the Date headers of these very answers
        # Judge and reschedule from when the answers arrived: a long tick must not leave
        # batches due again early.
        now = self.clock()
        work = [self._observe_safely(t, r, now, rec) for t, r in zip(claimed, results, strict=True)]
        candidates = [
            self._candidate(w, now) for w in work if w.verdict and w.verdict.action == "cancel"
        ]
        decided = plan(
            candidates,
            dry_run=self.rules.dry_run,
            max_cancels=gate.allowed,
            alert_only=gate.alert_only,
        )
        await self._hourly_limit(decided, now)
        summary.cancel_held += len(decided.held)
        fresh = {(e.provider, e.batch_id) for e in rec.events if e.kind == "policy_matched"}
        for candidate, reason in decided.held:
            # Say why once, when the policy first matches; later ticks only count it.
            key = (candidate.provider, candidate.batch_id)
            (log.info if key in fresh else log.debug)(
                "cancel_held",
                batch_id=candidate.batch_id,
                provider=candidate.provider,
                policy=candidate.policy,
                reason=reason,
            )
        gate = Gate(gate.allowed - len(decided.cancel), gate.alert_only)
        if decided.capped:
            gate = await self._trip(decided.cancel, decided.capped, now, summary)
        by_key = {w.tracked.key: w for w in work}
        sending = [by_key[(c.provider, c.batch_id)] for c in decided.cancel]
        for item in sending:
            self._request_cancel(item, now, rec)
        # Everything seen and cancel_requested are stored before any cancel goes out, and
        # only for rows this replica still holds: a lost lease means another one has them.
        written = await self.store.apply([w.update for w in work], rec.events, owner=self.owner)
        self._report_lost(work, written)
        self._announce([e for e in rec.events if (e.provider, e.batch_id) in written])
        sending = [w for w in sending if w.tracked.key in written]
        if sending:
            await self._send_cancels(sending, now, summary)
        return gate

    async def _hourly_limit(self, decided: Plan, now: datetime) -> None:
        """Take the planned cancels from the hourly budget all replicas share; the ones
        it does not grant are held back like the per-tick cap's (and trip the safety)."""
        granted = await reserve(self.store, self.rules.safety, len(decided.cancel), now)
        over, decided.cancel = decided.cancel[granted:], decided.cancel[:granted]
        limit = self.rules.safety.max_cancels_per_hour
        decided.held += [(c, f"hourly cancel limit ({limit}, all replicas) reached") for c in over]
        decided.capped += len(over)

    async def _trip(
        self, sending: list[Candidate], capped: int, now: datetime, summary: TickSummary
    ) -> Gate:
        limits = self.rules.safety
        event = await trip(
            self.store,
            now,
            would_cancel=len(sending) + capped,
            cancelled=len(sending),
            held=capped,
            max_cancels_per_tick=limits.max_cancels_per_tick,
            max_cancels_per_hour=limits.max_cancels_per_hour,
        )
        summary.safety_tripped += 1
        self.metrics.safety_tripped.set(1)
        self._announce([event])
        return Gate(0, "safety tripped: alert-only until resume")

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
                events.append(Event(now, name, None, "clock_skew", detail={"offset_s": offset}))
                log.error("clock_skew", provider=name, offset_s=offset, note=why)
            elif not off and name in self._skewed:
                del self._skewed[name]
                log.warning("clock_skew_cleared", provider=name, offset_s=offset)
        if events:
            await self.store.apply([], events)

    async def _provider_changes(self) -> None:
        """Record providers going unavailable (circuit open) and coming back."""
        now, events = self.clock(), []
        for name, client in self.clients.items():
            breaker = client.breaker
            for change in breaker.changes:
                kind = f"provider_{change}"
                events.append(Event(now, name, None, kind, detail={"failures": breaker.failures}))
                (log.warning if change == "unavailable" else log.info)(kind, provider=name)
            breaker.changes.clear()
            self.metrics.provider_available.labels(name).set(breaker.available)
        if events:
            await self.store.apply([], events)

    def _announce(self, events: list[Event]) -> None:
        if self.on_events is not None and events:
            self.on_events(events)

    def _report_lost(self, work: list[Work], written: set[tuple[str, str]]) -> None:
        for item in work:
            if item.tracked.key not in written:
                provider, batch_id = item.tracked.key
                log.warning(
                    "lease_lost",
                    batch_id=batch_id,
                    provider=provider,
                    note="results dropped; the batch is another replica's now",
                )

    async def _bulk_refresh(self) -> dict[tuple[str, str], tuple[BatchObject, datetime]]:
        """When many batches of one provider are due, read them from the list endpoint,
        100 a page, instead of one GET each; the ones the pages miss are fetched singly."""
        found: dict[tuple[str, str], tuple[BatchObject, datetime]] = {}
        if not self.bulk_threshold:
            return {}
        due = await self.store.due_by_provider(self.clock(), at_least=self.bulk_threshold)
        for provider, (count, oldest) in due.items():
            client = self.clients.get(provider)
            if client is None or not self.bulk_threshold or count < self.bulk_threshold:
                continue
            read_at = self.clock()
            listed = await self._list_recent(client, oldest, count)
            found.update({(provider, b.id): (b, read_at) for b in listed})
            log.debug("bulk_refreshed", provider=provider, due=count, listed=len(listed))
        return found

    async def _list_recent(
        self, client: ProviderClient, oldest: datetime | None, due: int
    ) -> list[BatchObject]:
        """Pages newest first until past the oldest due batch's creation. A provider whose
        ``has_more`` never ends, or whose cursor does not move, is cut short."""
        listed: dict[str, BatchObject] = {}
        after = None
        for _ in range(due // 100 + 20):
            try:
                page = await client.list(limit=100, after=after)
            except (ProviderError, InvalidBatchId) as exc:
                log.warning("bulk_refresh_stopped", provider=client.name, error=str(exc)[:200])
                break
            if page.skipped:  # those batches are fetched singly, like any the pages miss
                log.info("list_items_skipped", provider=client.name, skipped=page.skipped)
            fresh = [b for b in page.data if b.id not in listed]
            listed.update((b.id, b) for b in fresh)
            moved = page.cursor is not None and page.cursor != after
            if not moved or not page.has_more or (fresh and _older(fresh[-1], oldest)):
                break
            after = page.cursor
        return list(listed.values())

    async def _fetch(self, tracked: Tracked) -> BatchObject | ProviderError:
        provider, batch_id = tracked.key
        prefetched = self._prefetched.pop(tracked.key, None)
        if prefetched is not None:
            answer, read_at = prefetched
            if tracked.last_polled_at is None or tracked.last_polled_at <= read_at:
                return answer
        client = self.clients.get(provider)
        if client is None:
            return PermanentError(f"provider {provider!r} is not configured")
        try:
            validate_batch_id(batch_id)
        except InvalidBatchId as exc:
            return PermanentError(str(exc))
        try:
            return await client.get(batch_id)
        except ProviderError as exc:
            return exc
        except Exception as exc:  # a bug must not cost the other batches their tick
            log.exception("poll_crashed", batch_id=batch_id, provider=provider)
            return PermanentError(f"internal error: {type(exc).__name__}")

    def _crossing(
        self, tracked: Tracked, view: BatchView, cost: Decimal | None, now: datetime
    ) -> timedelta | None:
        """Adaptive polling: how soon a cancel policy that applies to this batch may start
        to hold — its cost passing a cap at the spend rate since the last poll, or its age
        or time to expiry crossing a limit."""
        if not self.adaptive:
            return None
        policies = [
            p
            for p in self.rules.policies
            if p.action == "cancel" and view.status in p.when.statuses and p.match.matches(view)
        ]
        soonest = [at - now for p in policies for at in time_triggers(p, view) if at > now]
        caps = [float(p.when.cost_usd_above) for p in policies if p.when.cost_usd_above is not None]
        if cost is not None and tracked.cost_usd is not None and tracked.last_polled_at:
            elapsed = (now - tracked.last_polled_at).total_seconds()
            seconds = seconds_to_cross(float(cost), float(tracked.cost_usd), elapsed, caps)
            if seconds is not None:
                soonest.append(timedelta(seconds=seconds))
        return min(soonest, default=None)

    def _schedule(
        self, now: datetime, status: str | None, crossing: timedelta | None = None
    ) -> dict[str, Any]:
        # A little slack so the next tick, which may fire a hair early, finds it due.
        interval = self.poll_interval
        if status == CANCELLING:  # follow a cancel through more closely
            interval = min(interval, self.rules.safety.cancel_poll_interval)
        if crossing is not None and crossing < interval:
            # Come back just as the cost passes a cap, not a whole interval later.
            return {
                "next_poll_at": now + crossing + ADAPTIVE_MARGIN,
                "lease_owner": None,
                "lease_expires_at": None,
            }
        slack = min(interval / 10, timedelta(seconds=5))
        next_poll = None if status in TERMINAL else now + interval - slack
        return {"next_poll_at": next_poll, "lease_owner": None, "lease_expires_at": None}

    def _observe_safely(
        self, tracked: Tracked, result: BatchObject | ProviderError, now: datetime, rec: Recorder
    ) -> Work:
        """A batch whose answer trips a bug fails its own poll, never the tick."""
        mark = len(rec.events)
        try:
            return self._observe(tracked, result, now, rec)
        except Exception as exc:
            del rec.events[mark:]
            provider, batch_id = tracked.key
            log.exception("observe_crashed", batch_id=batch_id, provider=provider)
            error = PermanentError(f"internal error: {type(exc).__name__}: {exc}"[:300])
            update = RowUpdate(*tracked.key)
            self._poll_failed(tracked, error, now, update, rec)
            return Work(tracked, update)

    def _observe(
        self, tracked: Tracked, result: BatchObject | ProviderError, now: datetime, rec: Recorder
    ) -> Work:
        update = RowUpdate(*tracked.key)
        if isinstance(result, BatchObject) and (why := implausible(result, now)) is not None:
            result = PermanentError(why)
        if isinstance(result, ProviderError):
            self._poll_failed(tracked, result, now, update, rec)
            return Work(tracked, update)
        rec.summary.polled += 1
        self.metrics.polls.labels(tracked.view.provider, "ok").inc()
        view = self._diff(tracked, result, update, rec)
        cost = batch_cost(self.rules.pricing, view.provider, view.model, view.tokens)
        update.values.update(
            cost_usd=cost,
            tracked_at=tracked.tracked_at or now,
            last_polled_at=now,
            poll_failures=0,
            last_error=None,
            **self._schedule(now, view.status, self._crossing(tracked, view, cost, now)),
        )
        progress_at = self._progress_at(tracked, view, now)
        update.values["progress_at"] = progress_at
        self._pricing(tracked, view, cost, now, update, rec)
        self._reconcile_cancel(tracked, view, now, update, rec)
        self._follow_through(tracked, view, cost, now, update, rec)
        previous = tracked.view.counts
        history = History(
            finished=None if previous is None else previous.finished,
            at=tracked.last_polled_at,
            progress_at=progress_at,
        )
        evaluation = evaluate(self.rules.policies, Facts(view, cost, now, history), tracked.pending)
        update.values["pending"] = {k: v.isoformat() for k, v in evaluation.pending.items()} or None
        self._matched(tracked, view, evaluation.verdict, update, rec)
        tracked.view = view
        return Work(tracked, update, evaluation.verdict, cost)

    @staticmethod
    def _progress_at(tracked: Tracked, view: BatchView, now: datetime) -> datetime | None:
        """When completed + failed last moved (now, if it just did)."""
        old, new = tracked.view.counts, view.counts
        if new is None:
            return tracked.progress_at
        if old is None or old.finished != new.finished or tracked.progress_at is None:
            return now
        return tracked.progress_at

    def _follow_through(
        self,
        tracked: Tracked,
        view: BatchView,
        cost: Decimal | None,
        now: datetime,
        update: RowUpdate,
        rec: Recorder,
    ) -> None:
        """After our cancel: flag a batch that has not ended ``cancel_stuck_after`` later,
        whatever its status (still cancelling, or still running after a cancel that did
        not take), and when it ends, record how it ended and what the cancel saved."""
        if tracked.cancel_requested_at is None:
            return
        if view.status not in TERMINAL and tracked.cancel_stuck_at is None:
            since = update.values.get("cancelling_at") or tracked.cancel_requested_at
            if now - since > self.rules.safety.cancel_stuck_after:
                rec.add(
                    tracked,
                    "cancel_stuck",
                    policy=tracked.cancel_policy,
                    to_status=view.status,
                    level="warning",
                    cancelling_for_s=(now - since).total_seconds(),
                )
                update.values["cancel_stuck_at"] = now
        ended = view.status in TERMINAL and tracked.view.status not in TERMINAL
        if ended and tracked.cancel_outcome == "succeeded":
            final, projected = cost, tracked.cancel_projected_usd
            saved = None if final is None or projected is None else projected - final
            rec.add(
                tracked,
                "cancel_settled",
                policy=tracked.cancel_policy,
                from_status=tracked.view.status,
                to_status=view.status,
                final_cost_usd=usd(final),
                projected_cost_usd=usd(projected),
                saved_usd=usd(saved),
                counts=None if view.counts is None else asdict(view.counts),
                usage=None if view.tokens is None else asdict(view.tokens),
            )

    def _diff(
        self, tracked: Tracked, batch: BatchObject, update: RowUpdate, rec: Recorder
    ) -> BatchView:
        """Store the wire fields; record status and count changes against what was known."""
        old, new = tracked.view, view_of(tracked.view.provider, batch)
        if new != old:  # an unchanged batch costs only its bookkeeping columns
            update.values.update(wire_columns(batch))
        if new.status != old.status:
            unknown = is_unknown_status(new.status)
            detail: dict[str, Any] = {"unknown_status": True} if unknown else {}
            rec.add(
                tracked,
                "status_changed",
                from_status=old.status,
                to_status=new.status,
                level="warning" if unknown else "info",
                **detail,
            )
        if new.counts is not None and new.counts != old.counts:
            before = None if old.counts is None else asdict(old.counts)
            rec.add(
                tracked,
                "counts_changed",
                from_status=old.status,
                to_status=new.status,
                level="debug",  # recorded on every poll of a running batch: not news
                before=before,
                after=asdict(new.counts),
            )
        return new

    def _poll_failed(
        self,
        tracked: Tracked,
        error: ProviderError,
        now: datetime,
        update: RowUpdate,
        rec: Recorder,
    ) -> None:
        message = str(error)
        self.metrics.polls.labels(tracked.view.provider, "failed").inc()
        update.values.update(
            poll_failures=tracked.poll_failures + 1,
            last_error=message,
            last_polled_at=now,
            **self._schedule(now, tracked.view.status),
        )
        if message != tracked.last_error:  # one event per streak of the same failure
            rec.add(
                tracked,
                "poll_failed",
                to_status=tracked.view.status,
                level="warning",
                error=message,
                http_status=error.status,
                temporary=error.temporary,
            )
        else:
            rec.summary.poll_failed += 1

    def _pricing(
        self,
        tracked: Tracked,
        view: BatchView,
        cost: Decimal | None,
        now: datetime,
        update: RowUpdate,
        rec: Recorder,
    ) -> None:
        if cost is None and view.tokens is not None and tracked.pricing_missing_at is None:
            rec.add(
                tracked, "pricing_missing", to_status=view.status, level="warning", model=view.model
            )
            update.values["pricing_missing_at"] = now

    def _reconcile_cancel(
        self, tracked: Tracked, view: BatchView, now: datetime, update: RowUpdate, rec: Recorder
    ) -> None:
        """A cancel whose outcome was not recorded (a crash, a timeout) settles from the
        provider's own state: cancelling or cancelled means it took effect."""
        unsettled = (
            tracked.cancel_requested_at is not None and tracked.cancel_outcome != "succeeded"
        )
        if unsettled and view.status in (CANCELLING, "cancelled"):
            rec.add(
                tracked,
                "cancel_succeeded",
                policy=tracked.cancel_policy,
                to_status=view.status,
                reconciled=True,
            )
            update.values.update(cancel_outcome="succeeded", cancel_finished_at=now)
            tracked.cancel_outcome = "succeeded"

    def _matched(
        self,
        tracked: Tracked,
        view: BatchView,
        verdict: Verdict | None,
        update: RowUpdate,
        rec: Recorder,
    ) -> None:
        name = verdict.policy if verdict else None
        update.values["matched_policy"] = name
        if verdict is not None and name != tracked.matched_policy:
            rec.add(
                tracked,
                "policy_matched",
                policy=name,
                to_status=view.status,
                action=verdict.action,
                dry_run=self.rules.dry_run,
                observed=dict(verdict.observed),
            )

    def _candidate(self, item: Work, now: datetime) -> Candidate:
        tracked, verdict = item.tracked, item.verdict
        assert verdict is not None
        exempt = exemption(
            tracked.view.metadata,
            self.rules.safety.exempt_metadata,
            tracked.exempt_until,
            tracked.exempt_reason,
            now,
        )
        return Candidate(
            *tracked.key,
            status=tracked.view.status,
            policy=verdict.policy,
            cancel_outcome=tracked.cancel_outcome,
            cancel_attempts=tracked.cancel_attempts,
            exempt=exempt,
            blocked=self._skewed.get(tracked.view.provider),
        )

    def _request_cancel(self, item: Work, now: datetime, rec: Recorder) -> None:
        """``cancel_requested``, written before the request goes out. The batch stays
        this replica's (its lease renewed) until the outcome is recorded, so no other
        replica polls it, judges it and sends a second cancel meanwhile. It is not an
        attempt yet: a crash here must not use one up."""
        tracked, verdict = item.tracked, item.verdict
        assert verdict is not None
        rec.add(
            tracked,
            "cancel_requested",
            policy=verdict.policy,
            from_status=tracked.view.status,
            attempt=tracked.cancel_attempts + 1,
        )
        tracked.cancel_policy = verdict.policy
        projected = projected_cost(item.cost, tracked.view.counts, 1)
        item.update.values.update(
            cancel_policy=verdict.policy,
            cancel_requested_at=now,
            cancel_outcome=None,
            cancel_projected_usd=projected,
            lease_owner=self.owner,
            lease_expires_at=now + self.lease,
        )

    async def _send_cancels(self, sending: list[Work], now: datetime, summary: TickSummary) -> None:
        rec = Recorder(self.clock, summary)
        # The calls must end while the lease still holds (retries and Retry-After waits
        # included): past it, another replica could poll the batch before the provider
        # acted and send a second cancel. A call cut short is settled by the next poll,
        # which the outcome schedules after the provider has had time to act.
        budget = self.lease.total_seconds() * LEASE_SHARE_FOR_CANCELS
        answers = await asyncio.gather(*(self._cancel_one(w.tracked, budget) for w in sending))
        updates = []
        for item, answer in zip(sending, answers, strict=True):
            update = RowUpdate(*item.tracked.key)
            await self._settle(item, answer, self.clock(), update, rec)
            updates.append(update)
        # Fenced: a replica whose lease ran out during a long request writes nothing; the
        # next holder settles the cancel from the provider's state.
        written = await self.store.apply(updates, rec.events, owner=self.owner)
        self._report_lost(sending, written)
        self._announce([e for e in rec.events if (e.provider, e.batch_id) in written])

    async def _cancel_one(self, tracked: Tracked, budget: float) -> BatchObject | ProviderError:
        client = self.clients[tracked.view.provider]
        try:
            async with asyncio.timeout(budget):
                return await client.cancel(tracked.view.batch_id)
        except ProviderError as exc:
            return exc
        except TimeoutError:
            return TemporaryError(f"cancel call ran past {budget:g}s, most of the lease")
        except Exception as exc:  # never let one cancel's bug lose the others' outcomes
            log.exception("cancel_crashed", batch_id=tracked.view.batch_id)
            return PermanentError(f"internal error: {type(exc).__name__}")

    async def _settle(
        self,
        item: Work,
        answer: BatchObject | ProviderError,
        now: datetime,
        update: RowUpdate,
        rec: Recorder,
    ) -> None:
        """Record what the cancel's answer means (decisions.settle), give the lease back,
        and learn the batch's state from the answer, or from a GET when refused."""
        tracked = item.tracked
        settled = settle(
            _answer(answer), tracked.cancel_attempts, tracked.cancel_retries, self._follow_up()
        )
        self._record_settled(tracked, answer, settled, rec)
        update.values.update(
            cancel_outcome=settled.outcome,
            cancel_finished_at=now,
            cancel_attempts=settled.attempts,
            cancel_retries=settled.retries,
            lease_owner=None,
            lease_expires_at=None,
        )
        if settled.outcome == "succeeded":
            tracked.cancel_outcome = "succeeded"
        if isinstance(answer, BatchObject):
            self._absorb(tracked, answer, now, update, rec)
        elif isinstance(answer, CancelRefused):  # finished, it says: learn its state now
            await self._refresh(tracked, now, update, rec)
            if tracked.view.status in ACTIVE:  # yet it runs on: say so, never resend
                why = f"the provider refused the cancel ({answer}) but the batch is still "
                self._abandon(tracked, settled.attempts, why + str(tracked.view.status), rec)
        if settled.retry_in is not None and tracked.view.status not in TERMINAL:
            update.values["next_poll_at"] = now + settled.retry_in

    def _follow_up(self) -> timedelta:
        return min(self.rules.safety.cancel_poll_interval, self.poll_interval)

    def _record_settled(
        self,
        tracked: Tracked,
        answer: BatchObject | ProviderError,
        settled: Settled,
        rec: Recorder,
    ) -> None:
        policy = tracked.cancel_policy
        self.metrics.cancels.labels(tracked.view.provider, policy or "", settled.outcome).inc()
        if settled.outcome == "succeeded":
            to_status = answer.status if isinstance(answer, BatchObject) else None
            rec.add(
                tracked,
                "cancel_succeeded",
                policy=policy,
                from_status=tracked.view.status,
                to_status=to_status,
                attempt=settled.attempts,
            )
            return
        error = f"batch still {answer.status}" if isinstance(answer, BatchObject) else str(answer)
        rec.add(
            tracked,
            "cancel_failed",
            policy=policy,
            from_status=tracked.view.status,
            level="warning",
            error=error,
            http_status=None if isinstance(answer, BatchObject) else answer.status,
            reason=settled.reason,
            attempt=settled.attempts,
            retry_in_s=None if settled.retry_in is None else settled.retry_in.total_seconds(),
        )
        if settled.abandoned:
            why = f"{settled.attempts} answers from the provider and none took: {error}"
            self._abandon(tracked, settled.attempts, why, rec)

    def _abandon(self, tracked: Tracked, attempts: int, why: str, rec: Recorder) -> None:
        """A cancel given up: a warning event with why, and a metric."""
        policy = tracked.cancel_policy
        self.metrics.cancels_abandoned.labels(tracked.view.provider, policy or "").inc()
        rec.add(
            tracked,
            "cancel_abandoned",
            policy=policy,
            from_status=tracked.view.status,
            level="warning",
            attempts=attempts,
            why=why,
        )

    async def _refresh(
        self, tracked: Tracked, now: datetime, update: RowUpdate, rec: Recorder
    ) -> None:
        result = await self._fetch(tracked)
        if isinstance(result, BatchObject):
            self._absorb(tracked, result, now, update, rec)

    def _absorb(
        self, tracked: Tracked, batch: BatchObject, now: datetime, update: RowUpdate, rec: Recorder
    ) -> None:
        view = self._diff(tracked, batch, update, rec)
        cost = batch_cost(self.rules.pricing, view.provider, view.model, view.tokens)
        update.values.update(cost_usd=cost, **self._schedule(now, view.status))
        tracked.view = view
