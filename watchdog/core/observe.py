"""Step "observe" of a tick: one batch's answer (or failure) against what was known of
it, turned into the row change, the events and the policies' verdict. Pure: it takes
``now`` and the rules, and returns values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from watchdog.core.budgets import Budget
from watchdog.core.cadence import Cadence, slack
from watchdog.core.config import SafetySettings
from watchdog.core.errors import PermanentError, ProviderError
from watchdog.core.estimates import EstimateSettings, Range, estimate_error, estimated_cost
from watchdog.core.events import Event, Kind
from watchdog.core.models import (
    CANCELLING,
    TERMINAL,
    BatchObject,
    BatchView,
    Counts,
    from_unix,
    implausible,
    is_unknown_status,
    view_of,
)
from watchdog.core.policies import (
    Discovery,
    Facts,
    History,
    Policy,
    Verdict,
    evaluate,
    time_triggers,
)
from watchdog.core.pricing import Price, batch_cost, seconds_to_cross, usd
from watchdog.core.rows import Change, Tracked

ADAPTIVE_MARGIN = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Rules:
    """What the daemon judges by; swapped whole when the config is reloaded."""

    policies: tuple[Policy, ...] | list[Policy]
    pricing: tuple[Price, ...] | list[Price]
    dry_run: bool = False
    safety: SafetySettings = field(default_factory=SafetySettings)
    discover: Mapping[str, Discovery] = field(default_factory=dict)  # by provider
    budgets: tuple[Budget, ...] = ()
    estimate: EstimateSettings = field(default_factory=EstimateSettings)
    estimated: frozenset[str] = frozenset()  # providers whose input files are read


@dataclass(frozen=True, slots=True)
class Judging:
    """The rules and cadence the pure steps judge by."""

    rules: Rules
    cadence: Cadence
    # The tick's start: the regular next poll counts from it, not from each answer, so
    # that what one tick polled falls due together for the next (one list pass, not a
    # trickle of small early ticks and single GETs).
    tick_start: datetime | None = None

    @property
    def follow_up(self) -> timedelta:
        """How soon to look again at a batch a cancel was sent to."""
        return min(self.rules.safety.cancel_poll_interval, self.cadence.interval)


@dataclass(slots=True)
class Observation:
    """One batch after its poll: as it now stands (``after``), what to write, what
    happened, and what the policies say."""

    before: Tracked
    after: Tracked
    change: Change
    events: list[Event] = field(default_factory=list)
    verdict: Verdict | None = None
    cost: Decimal | None = None
    ok: bool = True  # the poll got an answer that made sense

    @property
    def key(self) -> tuple[str, str]:
        return self.before.key


def event(tracked: Tracked, kind: Kind, now: datetime, **fields: Any) -> Event:
    """An event about this batch; keyword arguments other than Event's go to detail."""
    named = {
        k: fields.pop(k) for k in ("from_status", "to_status", "policy", "level") if k in fields
    }
    return Event(now, *tracked.key, kind, detail=fields or {}, **named)


def observe(
    tracked: Tracked, result: BatchObject | ProviderError, now: datetime, judging: Judging
) -> Observation:
    """What one poll's answer means."""
    if isinstance(result, BatchObject) and (why := implausible(result, now)) is not None:
        result = PermanentError(why)
    if isinstance(result, ProviderError):
        return failed(tracked, result, now, judging)
    obs = absorb(tracked, result, now, judging, adaptive=True)
    after, change = obs.after, obs.change
    change.tracked_at = tracked.tracked_at or now
    change.last_polled_at, change.poll_failures, change.last_error = now, 0, None
    change.progress_at = _progress_at(tracked, after.view, now)
    obs.events += _pricing(tracked, after.view, obs.cost, now, change)
    obs.events += _reconcile_cancel(obs, now)
    obs.events += _follow_through(obs, now, judging)
    previous = tracked.view.counts
    history = History(
        finished=None if previous is None else previous.finished,
        at=tracked.last_polled_at,
        progress_at=change.progress_at,
    )
    estimate = estimated_cost(judging.rules.pricing, *_model_of(after), tracked.estimate)
    obs.events = _with_estimate_error(obs.events, estimate, obs.cost)
    facts = Facts(after.view, obs.cost, now, history, estimate)
    evaluation = evaluate(judging.rules.policies, facts, tracked.pending)
    change.pending = evaluation.pending or None
    obs.verdict = evaluation.verdict
    obs.events += _matched(tracked, after.view, evaluation.verdict, now, judging, change)
    change.unchanged_dropped(tracked)
    return obs


def _model_of(tracked: Tracked) -> tuple[str, str | None]:
    return tracked.view.provider, tracked.view.model


def _with_estimate_error(
    events: list[Event], estimate: Range | None, cost: Decimal | None
) -> list[Event]:
    """The batch just ended: how far its estimate was from its cost goes into the audit
    event of its end."""
    found = estimate_error(estimate, cost)
    if found is None:
        return events
    return [
        replace(e, detail={**(e.detail or {}), "estimate_error": found})
        if e.kind == Kind.STATUS_CHANGED and e.to_status in TERMINAL
        else e
        for e in events
    ]


def failed(tracked: Tracked, error: ProviderError, now: datetime, judging: Judging) -> Observation:
    """A poll that failed: count the streak; one event per streak of the same failure."""
    message = str(error)
    change = Change(*tracked.key, poll_failures=tracked.poll_failures + 1, last_error=message)
    change.last_polled_at = now
    change.merge(schedule(tracked.key, now, tracked.view.status, judging))
    events = []
    if message != tracked.last_error:
        events.append(
            event(
                tracked,
                Kind.POLL_FAILED,
                now,
                to_status=tracked.view.status,
                error=message,
                http_status=error.status,
                temporary=error.temporary,
            )
        )
    return Observation(tracked, tracked, change, events, ok=False)


def absorb(
    tracked: Tracked,
    batch: BatchObject,
    now: datetime,
    judging: Judging,
    *,
    adaptive: bool = False,
) -> Observation:
    """Take in a batch object (a poll's, or a cancel's answer): its wire fields, its cost,
    its status and count changes, and when to look at it next."""
    old = tracked.view
    new = view_of(old.provider, batch, old.labels)
    # An unchanged batch costs only its bookkeeping columns.
    change = Change(*tracked.key, wire=batch if new != old else None)
    cost = batch_cost(judging.rules.pricing, new.provider, new.model, new.tokens)
    change.cost_usd = cost
    crossing = _crossing(tracked, new, cost, now, judging) if adaptive else None
    change.merge(schedule(tracked.key, now, new.status, judging, crossing))
    if new.status in TERMINAL and old.status not in TERMINAL:
        change.finished_at = now  # what the budgets take in since they last looked
    after = tracked.copy_with(view=new, cost_usd=cost)
    return Observation(tracked, after, change, _changes(tracked, old, new, now), cost=cost)


def _changes(tracked: Tracked, old: BatchView, new: BatchView, now: datetime) -> list[Event]:
    """Status and count changes against what was known."""
    events = []
    if new.status != old.status:
        unknown = is_unknown_status(new.status)
        detail: dict[str, Any] = {"unknown_status": True} if unknown else {}
        # First sight (from null) is recorded, but is no news to a reader of the log:
        # tracking ten thousand batches must not print ten thousand lines.
        level = "warning" if unknown else "debug" if old.status is None else None
        events.append(
            event(
                tracked,
                Kind.STATUS_CHANGED,
                now,
                from_status=old.status,
                to_status=new.status,
                level=level,
                **detail,
            )
        )
    if new.counts is not None and new.counts != old.counts:
        before = None if old.counts is None else old.counts.as_dict()
        events.append(
            event(
                tracked,
                Kind.COUNTS_CHANGED,
                now,
                from_status=old.status,
                to_status=new.status,
                before=before,
                after=new.counts.as_dict(),
            )
        )
    return events


def schedule(
    key: tuple[str, str],
    now: datetime,
    status: str | None,
    judging: Judging,
    crossing: timedelta | None = None,
) -> Change:
    """When to poll next (and the lease given back)."""
    interval = judging.cadence.interval
    if status == CANCELLING:  # follow a cancel through more closely
        interval = min(interval, judging.rules.safety.cancel_poll_interval)
    change = Change(*key, lease_owner=None, lease_expires_at=None)
    if crossing is not None and crossing < interval:
        # Come back just as the cost passes a cap, not a whole interval later.
        change.next_poll_at = now + crossing + ADAPTIVE_MARGIN
        return change
    base = min(judging.tick_start or now, now)
    change.next_poll_at = None if status in TERMINAL else base + interval - slack(interval)
    return change


def _crossing(
    tracked: Tracked, view: BatchView, cost: Decimal | None, now: datetime, judging: Judging
) -> timedelta | None:
    """Adaptive polling: how soon a cancel policy that applies to this batch may start
    to hold — its cost passing a cap at the spend rate since the last poll, or its age
    or time to expiry crossing a limit."""
    if not judging.cadence.adaptive:
        return None
    policies = [
        p
        for p in judging.rules.policies
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


def _progress_at(tracked: Tracked, view: BatchView, now: datetime) -> datetime | None:
    return moved_at(tracked.view.counts, view.counts, tracked.progress_at, now)


def moved_at(
    old: Counts | None, new: Counts | None, since: datetime | None, now: datetime
) -> datetime | None:
    """When completed + failed last moved (now, if it just did)."""
    if new is None:
        return since
    if old is None or old.finished != new.finished or since is None:
        return now
    return since


def _pricing(
    tracked: Tracked, view: BatchView, cost: Decimal | None, now: datetime, change: Change
) -> list[Event]:
    if cost is None and view.tokens is not None and tracked.pricing_missing_at is None:
        change.pricing_missing_at = now
        return [event(tracked, Kind.PRICING_MISSING, now, to_status=view.status, model=view.model)]
    return []


def _reconcile_cancel(obs: Observation, now: datetime) -> list[Event]:
    """A cancel whose outcome was not recorded (a crash, a timeout) settles from the
    provider's own state: cancelling or cancelled means it took effect."""
    tracked, status = obs.before, obs.after.view.status
    unsettled = tracked.cancel_requested_at is not None and tracked.cancel_outcome != "succeeded"
    if not unsettled or status not in (CANCELLING, "cancelled"):
        return []
    obs.change.cancel_outcome, obs.change.cancel_finished_at = "succeeded", now
    obs.after.cancel_outcome = "succeeded"
    return [
        event(
            tracked,
            Kind.CANCEL_SUCCEEDED,
            now,
            policy=tracked.cancel_policy,
            to_status=status,
            reconciled=True,
        )
    ]


def _follow_through(obs: Observation, now: datetime, judging: Judging) -> list[Event]:
    """After our cancel: flag a batch that has not ended ``cancel_stuck_after`` later,
    whatever its status (still cancelling, or still running after a cancel that did
    not take), and when it ends, record how it ended and what the cancel saved."""
    tracked, view = obs.before, obs.after.view
    if tracked.cancel_requested_at is None:
        return []
    events = []
    if view.status not in TERMINAL and tracked.cancel_stuck_at is None:
        since = _cancelling_at(obs.change) or tracked.cancel_requested_at
        if now - since > judging.rules.safety.cancel_stuck_after:
            events.append(
                event(
                    tracked,
                    Kind.CANCEL_STUCK,
                    now,
                    policy=tracked.cancel_policy,
                    to_status=view.status,
                    cancelling_for_s=(now - since).total_seconds(),
                )
            )
            obs.change.cancel_stuck_at = now
    ended = view.status in TERMINAL and tracked.view.status not in TERMINAL
    if ended and obs.after.cancel_outcome == "succeeded":
        events.append(_settled(tracked, view, obs.cost, now))
    return events


def _cancelling_at(change: Change) -> datetime | None:
    """When the provider says the batch started cancelling (in this very answer)."""
    return None if change.wire is None else from_unix(change.wire.cancelling_at)


def _settled(tracked: Tracked, view: BatchView, cost: Decimal | None, now: datetime) -> Event:
    projected = tracked.cancel_projected_usd
    saved = None if cost is None or projected is None else projected - cost
    return event(
        tracked,
        Kind.CANCEL_SETTLED,
        now,
        policy=tracked.cancel_policy,
        from_status=tracked.view.status,
        to_status=view.status,
        final_cost_usd=usd(cost),
        projected_cost_usd=usd(projected),
        saved_usd=usd(saved),
        counts=None if view.counts is None else view.counts.as_dict(),
        usage=None if view.tokens is None else view.tokens.as_dict(),
    )


def _matched(
    tracked: Tracked,
    view: BatchView,
    verdict: Verdict | None,
    now: datetime,
    judging: Judging,
    change: Change,
) -> list[Event]:
    name = verdict.policy if verdict else None
    change.matched_policy = name
    if verdict is None or name == tracked.matched_policy:
        return []
    return [
        event(
            tracked,
            Kind.POLICY_MATCHED,
            now,
            policy=name,
            to_status=view.status,
            action=verdict.action,
            dry_run=judging.rules.dry_run,
            observed=dict(verdict.observed),
        )
    ]
