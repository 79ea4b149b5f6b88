"""A batch's timeline judged again — the samples the daemon recorded (``replay``) or a
scripted one (``test-policies``) — as the daemon judges a poll: its facts, its
``evaluate`` and its hold rules, poll by poll. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from watchdog.core.decisions import Candidate, exemption, hold_reason
from watchdog.core.durations import iso
from watchdog.core.estimates import Estimate, estimated_cost
from watchdog.core.models import (
    TERMINAL,
    BatchObject,
    BatchView,
    Counts,
    Tokens,
    implausible,
    view_of,
)
from watchdog.core.observe import Judging, moved_at
from watchdog.core.policies import Facts, History, Verdict, evaluate, unchanged_until
from watchdog.core.pricing import Price, batch_cost, projected_cost, usd


@dataclass(frozen=True, slots=True)
class Sample:
    """The batch as one poll saw it: its view, and the answer it came in when there is
    one to check (a scripted timeline's; a recorded one was checked when it was read)."""

    at: datetime
    view: BatchView
    wire: BatchObject | None = None

    @classmethod
    def of(cls, at: datetime, provider: str, wire: BatchObject) -> Sample:
        return cls(at, view_of(provider, wire), wire)


@dataclass(frozen=True, slots=True)
class Step:
    """One poll judged: what matched, and whether a cancel would go out (or why not)."""

    at: datetime
    status: str | None
    verdict: Verdict | None
    cancel: bool
    held: str | None
    cost: Decimal | None
    projected: Decimal | None

    @property
    def saves(self) -> Decimal | None:
        """What a cancel here would save at the projected rate."""
        if not self.cancel or self.cost is None or self.projected is None:
            return None
        return max(self.projected - self.cost, Decimal(0))


@dataclass(frozen=True, slots=True)
class State:
    """What the daemon keeps of a batch between polls, as far as a verdict reads it:
    the last view, when it was polled, when its counts last moved, its ``for:`` clocks."""

    view: BatchView
    polled_at: datetime | None = None
    progress_at: datetime | None = None
    pending: Mapping[str, datetime] = field(default_factory=dict)
    estimate: Estimate | None = None  # its input file's, known from its made_at on


def fresh(view: BatchView, estimate: Estimate | None = None) -> State:
    """A batch as the daemon holds it before its first poll."""
    return State(replace(view, status=None, counts=None, tokens=None), estimate=estimate)


def judge(
    start: State,
    samples: Sequence[Sample],
    judging: Judging,
    *,
    every: timedelta | None = None,
    until: datetime | None = None,
    fast: bool = True,
) -> list[Step]:
    """Poll the batch at each sample's time — and, with ``every``, also every so often
    between samples and after the last one until ``until`` (seeing the last sample
    again, as an unchanged batch is) — judging each poll as the daemon does; the steps
    up to and including the first cancel that would be sent. ``fast``: a poll that sees
    the same answer as the last, before any clock-driven condition can flip, takes the
    last verdict instead of being judged again (the same steps, far fewer judgements)."""
    steps: list[Step] = []
    state, seen, steady = start, None, None
    for at, sample in _polls(samples, every, until):
        if fast and sample is seen and steady is not None and at < steady:
            # The same answer again, and no clock-driven condition can flip before
            # ``steady``: the daemon would judge it as it just did.
            steps.append(replace(steps[-1], at=at))
            continue
        step, state = poll(state, sample, at, judging)
        steps.append(step)
        if step.cancel:
            break
        seen, steady = sample, _steady(state, at, judging)
    return steps


def poll(state: State, sample: Sample, at: datetime, judging: Judging) -> tuple[Step, State]:
    """One poll, judged as ``observe`` judges it (the same facts and history, the same
    ``evaluate``, the same hold rules), and the state it leaves."""
    rules = judging.rules
    if sample.wire is not None and implausible(sample.wire, at) is not None:
        # A failed poll: nothing judged, its time noted.
        return Step(at, state.view.status, None, False, None, None, None), replace(
            state, polled_at=at
        )
    view = sample.view
    cost = batch_cost(rules.pricing, view.provider, view.model, view.tokens)
    moved = moved_at(state.view.counts, view.counts, state.progress_at, at)
    before = state.view.counts
    history = History(None if before is None else before.finished, state.polled_at, moved)
    known = state.estimate if state.estimate and state.estimate.made_at <= at else None
    estimate = estimated_cost(rules.pricing, view.provider, view.model, known)
    evaluation = evaluate(rules.policies, Facts(view, cost, at, history, estimate), state.pending)
    verdict, held = evaluation.verdict, None
    if verdict is not None and verdict.action == "cancel":
        exempt = exemption(view.metadata, rules.safety.exempt_metadata, None, None, at)
        candidate = Candidate(view.provider, view.batch_id, view.status, verdict.policy,
                              exempt=exempt)  # fmt: skip
        held = hold_reason(candidate)
    cancel = verdict is not None and verdict.action == "cancel" and held is None
    step = Step(at, view.status, verdict, cancel, held, cost, projected_cost(cost, view.counts, 1))
    return step, State(view, at, moved, evaluation.pending, state.estimate)


def _steady(state: State, at: datetime, judging: Judging) -> datetime | None:
    """Until when polls that see nothing new are judged alike (None: judge each)."""
    if state.view.status in TERMINAL:
        return None
    policies = judging.rules.policies
    return unchanged_until(policies, state.view, state.progress_at, state.pending, at)


def _polls(
    samples: Sequence[Sample], every: timedelta | None, until: datetime | None
) -> Iterator[tuple[datetime, Sample]]:
    ordered = sorted(samples, key=lambda s: s.at)
    for i, sample in enumerate(ordered):
        if until is not None and sample.at > until:
            return
        yield sample.at, sample
        if every is None or sample.view.status in TERMINAL:
            continue
        end = ordered[i + 1].at if i + 1 < len(ordered) else until
        if until is not None and end is not None:
            end = min(end, until)
        at = sample.at + every
        while end is not None and at < end:
            yield at, sample
            at += every


def view_at(view: BatchView, sampled: Mapping[str, Any]) -> BatchView:
    """A recorded sample (status, counts, tokens) on a batch's fixed fields: the view
    that poll had (the daemon checked the answer when it read it: not read again)."""
    counts = tokens = None
    if sampled.get("request_total") is not None:
        counts = Counts(sampled["request_total"], sampled.get("request_completed") or 0,
                        sampled.get("request_failed") or 0)  # fmt: skip
    if sampled.get("input_tokens") is not None and sampled.get("output_tokens") is not None:
        tokens = Tokens(sampled["input_tokens"], sampled.get("cached_tokens") or 0,
                        sampled["output_tokens"], sampled.get("reasoning_tokens") or 0)  # fmt: skip
    status = sampled.get("status") or "validating"
    return BatchView(view.provider, view.batch_id, status, view.model, view.metadata,
                     view.created_at, view.expires_at, counts, tokens, view.labels)  # fmt: skip


def usage_wire(inputs: int, outputs: int, *, cached: int, reasoning: int) -> dict[str, Any]:
    """Token counts as a batch object's ``usage`` carries them."""
    return {
        "input_tokens": inputs,
        "output_tokens": outputs,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens_details": {"reasoning_tokens": reasoning},
    }


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the daemon did to one batch: its first cancel (policy, when), what the batch
    had cost then and the projection the cancel was sent at (None: not cancelled)."""

    policy: str | None = None
    at: datetime | None = None
    cost: Decimal | None = None
    projected: Decimal | None = None
    dry_run: bool = False  # decided in a dry run: nothing was sent, the history goes on

    @property
    def saved(self) -> Decimal | None:
        if self.cost is None or self.projected is None:
            return None
        return max(self.projected - self.cost, Decimal(0))


def compare(
    view: BatchView,
    recorded: Recorded,
    steps: Sequence[Step],
) -> dict[str, Any]:
    """One batch's line of the replay report: what happened against what the new
    config would have done, and what that is worth at the projected rate."""
    cancel = steps[-1] if steps and steps[-1].cancel else None
    replayed = None
    if cancel is not None and cancel.verdict is not None:
        replayed = {
            "policy": cancel.verdict.policy,
            "at": iso(cancel.at),
            "cost_usd": usd(cancel.cost),
            "projected_usd": usd(cancel.projected),
            "saves_usd": usd(cancel.saves),
        }
    was = None
    if recorded.policy is not None and recorded.at is not None:
        was = {
            "policy": recorded.policy,
            "at": iso(recorded.at),
            "cost_usd": usd(recorded.cost),
            "saved_usd": usd(recorded.saved),
            "dry_run": recorded.dry_run,
        }
    change, note = _change(recorded, cancel)
    return {
        "provider": view.provider,
        "batch_id": view.batch_id,
        "recorded": was,
        "replayed": replayed,
        "change": change,
        "polls": len(steps),
        "note": note,
    }


def _change(recorded: Recorded, cancel: Step | None) -> tuple[str, str | None]:
    if recorded.policy is None:
        return ("newly_cancelled", None) if cancel else ("unchanged", None)
    limit = None  # a dry run sent nothing: its history goes on as it would have
    if not recorded.dry_run:
        when = iso(recorded.at) or "?"
        limit = (
            f"history after the real cancel ({when}) shows that cancel's effect: "
            "what the batch would have done without it is unknown"
        )
    if cancel is None or cancel.verdict is None:
        return "no_longer_cancelled", limit
    if recorded.at is not None and cancel.at < recorded.at:
        return "earlier", None
    if recorded.at is not None and cancel.at > recorded.at:
        return "later", limit
    same = cancel.verdict.policy == recorded.policy
    return ("unchanged", None) if same else ("other_policy", None)


@dataclass(slots=True)
class Tally:
    """The replay's totals, kept line by line (memory does not grow with the window):
    batches newly and no longer cancelled, dollars saved (new cancels, and earlier
    ones' extra) and put at risk (cancels the new config would not send)."""

    batches: int = 0
    newly: int = 0
    no_longer: int = 0
    moved: int = 0
    saved: Decimal = Decimal(0)
    at_risk: Decimal = Decimal(0)

    def add(self, line: Mapping[str, Any]) -> None:
        new, old, change = line["replayed"], line["recorded"], line["change"]
        self.batches += 1
        if change == "newly_cancelled":
            self.newly += 1
            self.saved += Decimal(str(new["saves_usd"] or 0))
        elif change in ("earlier", "later", "other_policy"):
            self.moved += change != "other_policy"
            self.saved += Decimal(str(new["saves_usd"] or 0)) - Decimal(str(old["saved_usd"] or 0))
        elif change == "no_longer_cancelled":
            self.no_longer += 1
            self.at_risk += Decimal(str(old["saved_usd"] or 0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "newly_cancelled": self.newly,
            "no_longer_cancelled": self.no_longer,
            "cancelled_at_another_time": self.moved,
            "saved_usd": usd(self.saved),
            "at_risk_usd": usd(self.at_risk),
        }


def recorded(
    samples: Sequence[Sample],
    cancel: tuple[datetime, str, bool] | None,
    pricing: Sequence[Price],
    provider: str,
) -> Recorded:
    """The real cancel, valued like the replay's: at the prices given, from the last
    sample the daemon had seen when it sent it."""
    if cancel is None:
        return Recorded()
    at, policy, dry = cancel
    before = [s for s in samples if s.at <= at]
    if not before:
        return Recorded(policy, at, dry_run=dry)
    view = before[-1].view
    cost = batch_cost(pricing, provider, view.model, view.tokens)
    return Recorded(policy, at, cost, projected_cost(cost, view.counts, 1), dry)
