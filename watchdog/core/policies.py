"""Policy specs (strict pydantic schemas) and their pure evaluation against one batch.
Conditions register by name; all of a policy's conditions must hold, and unknown
inputs (no usage, no counts, no price) never hold."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from math import inf, sqrt
from statistics import NormalDist
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from watchdog.core.durations import Duration, format_duration, iso
from watchdog.core.estimates import Range
from watchdog.core.models import ACTIVE, BatchView
from watchdog.core.pricing import Money, check_glob, projected_cost
from watchdog.core.schema import Strict


class Match(Strict):
    """Which batches a policy looks at; every given key must match."""

    provider: str | None = Field(default=None, description="a provider's name in the config")
    model: str | None = Field(default=None, description="model name or glob")
    metadata: dict[str, str] | None = Field(default=None, description="all pairs must be present")
    labels: dict[str, str] | None = Field(
        default=None, description="all pairs must be among the labels we gave the batch"
    )

    _glob = field_validator("model")(lambda v: v if v is None else check_glob(v))

    def matches(self, view: BatchView) -> bool:
        if self.provider is not None and self.provider != view.provider:
            return False
        if self.model is not None and (
            view.model is None or not fnmatchcase(view.model, self.model)
        ):
            return False
        meta, labels = view.metadata or {}, view.labels or {}
        if not all(labels.get(k) == v for k, v in (self.labels or {}).items()):
            return False
        return all(meta.get(k) == v for k, v in (self.metadata or {}).items())


def Ratio(description: str) -> Any:  # a Field, named as pydantic names its own
    return Field(default=None, ge=0, le=1, description=description)


def Threshold(description: str) -> Any:
    return Field(default=None, description=description)


class When(Strict):
    """Conditions, all of which must hold (AND). At least one is required."""

    cost_usd_above: Money | None = Threshold("cost so far > X (USD; known cost only)")
    projected_cost_usd_above: Money | None = Threshold("projected cost at completion > X")
    age_above: Duration | None = Threshold("now - created_at > D")
    expires_within: Duration | None = Threshold("expires_at - now < D")
    progress_below: float | None = Ratio("(completed + failed) / total < F")
    failure_ratio_above: float | None = Ratio("failed / finished > F, once min_requests finished")
    eta_after_expiry: Literal[True] | None = Threshold(
        "at the observed rate it will not finish before expires_at - finalizing_allowance"
    )
    stalled_for: Duration | None = Threshold("completed + failed has not moved for D")
    estimated_cost_usd_above: Money | None = Field(
        default=None, description="the input file's estimate, upper bound (input + max output)"
    )
    estimated_requests_above: int | None = Field(
        default=None, ge=0, description="requests in the input file"
    )
    min_requests: int = Field(default=10, ge=1, description="finished requests needed for ratios")
    failure_ratio_confidence: float | None = Field(
        default=None, gt=0.5, lt=1, description="judge the Wilson lower bound, not the raw ratio"
    )
    finalizing_allowance: Duration = Field(
        default=timedelta(minutes=10), description="time eta_after_expiry leaves for finalizing"
    )
    status_in: tuple[str, ...] | None = Field(
        default=None, min_length=1, description="statuses it applies to (default: the active)"
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> When:
        if not any(getattr(self, name) is not None for name in (*CONDITIONS, "status_in")):
            raise ValueError(f"needs at least one condition: {', '.join(sorted(CONDITIONS))}")
        return self

    @property
    def statuses(self) -> frozenset[str]:
        return ACTIVE if self.status_in is None else frozenset(self.status_in)


class Policy(Strict):
    """A named rule: which batches, under which conditions, and what to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the policy's name, in events and metrics",
    )  # fmt: skip
    match: Match = Field(default=Match(), description="which batches it looks at")
    when: When = Field(description="conditions that must all hold")
    action: Literal["cancel", "alert"] = Field(description="cancel, or only record (alert)")
    for_: Duration | None = Field(
        default=None, alias="for", description="act only once the conditions held this long"
    )


class Discovery(Strict):
    """Which batches of a provider's account the daemon starts tracking by itself: those
    its list shows, created within ``created_within``, that ``match`` selects."""

    match: Match = Field(default=Match(), description="only the batches this selects")
    created_within: Duration = Field(
        default=timedelta(days=7),
        description="look-back: older batches are never pulled in (7d covers every "
        "completion window the supported APIs allow)",
    )

    @field_validator("match")
    @classmethod
    def _no_provider(cls, match: Match) -> Match:
        if match.provider is not None:
            raise ValueError("match.provider: discovery is per provider already")
        return match

    def selects(self, view: BatchView, now: datetime) -> bool:
        """A batch to start tracking (the caller knows it is not tracked yet)."""
        recent = view.created_at is not None and view.created_at >= now - self.created_within
        return recent and self.match.matches(view)


def or_a_switch(schema: dict[str, Any]) -> None:
    """A setting written as ``true``/``false`` or as its object (``discover``): the JSON
    Schema says both."""
    schema["anyOf"] = [*schema["anyOf"][:1], {"type": "boolean"}, *schema["anyOf"][1:]]


@dataclass(frozen=True, slots=True)
class History:
    """What the previous poll saw, for conditions about progress over time."""

    finished: int | None = None  # completed + failed at the previous poll
    at: datetime | None = None  # when that poll was
    progress_at: datetime | None = None  # when completed + failed last moved


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a policy may look at: the batch, its cost so far, its history, the time."""

    view: BatchView
    cost: Decimal | None
    now: datetime
    history: History = History()
    estimate: Range | None = None  # the input file's estimate at the batch prices


@dataclass(frozen=True, slots=True)
class Verdict:
    policy: str
    action: str
    observed: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Condition:
    """How to observe a quantity (None: unknown) and whether it breaks the threshold."""

    observe: Callable[[When, Facts], Any]
    holds: Callable[[Any, Any], bool]


def _above(value: Any, threshold: Any) -> bool:
    return bool(value > threshold)


def _below(value: Any, threshold: Any) -> bool:
    return bool(value < threshold)


def _age(when: When, facts: Facts) -> timedelta | None:
    created = facts.view.created_at
    return None if created is None else facts.now - created


def _time_left(when: When, facts: Facts) -> timedelta | None:
    expires = facts.view.expires_at
    return None if expires is None else expires - facts.now


def _progress(when: When, facts: Facts) -> float | None:
    counts = facts.view.counts
    return None if counts is None or counts.total <= 0 else counts.finished / counts.total


def _failure_ratio(when: When, facts: Facts) -> float | None:
    counts = facts.view.counts
    if counts is None or counts.finished < when.min_requests or counts.finished == 0:
        return None
    if when.failure_ratio_confidence is not None:
        return wilson_lower(counts.failed, counts.finished, when.failure_ratio_confidence)
    return counts.failed / counts.finished


def wilson_lower(failed: int, finished: int, confidence: float) -> float:
    """The Wilson score interval's lower bound (one-sided at ``confidence``): a small
    sample with a high raw ratio does not yet prove a high true ratio."""
    z = NormalDist().inv_cdf(confidence)
    p = failed / finished
    centre = p + z * z / (2 * finished)
    margin = z * sqrt(p * (1 - p) / finished + z * z / (4 * finished * finished))
    return max(0.0, (centre - margin) / (1 + z * z / finished))


def _eta_overrun(when: When, facts: Facts) -> float | None:
    """Seconds by which the observed rate misses expires_at - finalizing_allowance
    (> 0: it will not make it); None while there is nothing to judge by."""
    view, history = facts.view, facts.history
    counts, expires = view.counts, view.expires_at
    if view.status != "in_progress" or counts is None or expires is None or counts.total <= 0:
        return None
    if history.finished is None or history.at is None or facts.now <= history.at:
        return None
    remaining = counts.total - counts.finished
    if remaining <= 0:
        return None
    rate = (counts.finished - history.finished) / (facts.now - history.at).total_seconds()
    deadline = (expires - when.finalizing_allowance - facts.now).total_seconds()
    return inf if rate <= 0 else remaining / rate - deadline


def _stalled(when: When, facts: Facts) -> timedelta | None:
    since = facts.history.progress_at
    if facts.view.status != "in_progress" or since is None:
        return None
    return facts.now - since


def _projected(when: When, facts: Facts) -> Decimal | None:
    return projected_cost(facts.cost, facts.view.counts, when.min_requests)


DURATION_CONDITIONS = frozenset({"age_above", "expires_within", "stalled_for"})
CONDITIONS: dict[str, Condition] = {
    "cost_usd_above": Condition(lambda w, f: f.cost, _above),
    "projected_cost_usd_above": Condition(_projected, _above),
    "age_above": Condition(_age, _above),
    "expires_within": Condition(_time_left, _below),
    "progress_below": Condition(_progress, _below),
    "failure_ratio_above": Condition(_failure_ratio, _above),
    "eta_after_expiry": Condition(_eta_overrun, lambda overrun, _: bool(overrun > 0)),
    "stalled_for": Condition(_stalled, _above),
    "estimated_cost_usd_above": Condition(lambda w, f: f.estimate and f.estimate.high, _above),
    "estimated_requests_above": Condition(lambda w, f: f.estimate and f.estimate.requests, _above),
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, float) and value == inf:
        return "never"
    return value


def judge(policy: Policy, facts: Facts) -> Verdict | None:
    """The verdict of one policy on one batch, or None when it does not apply or hold."""
    view, when = facts.view, policy.when
    if view.status not in when.statuses or not policy.match.matches(view):
        return None
    observed: dict[str, Any] = {}
    for name, condition in CONDITIONS.items():
        threshold = getattr(when, name)
        if threshold is None:
            continue
        value = condition.observe(when, facts)
        if value is None or not condition.holds(value, threshold):
            return None
        observed[name] = _jsonable(value)
    return Verdict(policy.name, policy.action, observed)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict (if any) and the ``for:`` clocks to keep for next time."""

    verdict: Verdict | None
    pending: dict[str, datetime]


def evaluate(
    policies: Sequence[Policy], facts: Facts, pending: Mapping[str, datetime] | None = None
) -> Evaluation:
    """The first policy, in order, whose match and conditions hold — for as long as its
    ``for:`` asks. A policy's clock starts when it first holds and stops when it does not."""
    clocks: dict[str, datetime] = {}
    verdict = None
    for policy in policies:
        found = judge(policy, facts)
        if found is None:
            continue
        if policy.for_ is not None:
            since = (pending or {}).get(policy.name, facts.now)
            clocks[policy.name] = since
            if facts.now - since < policy.for_:
                continue
            found = Verdict(
                found.policy,
                found.action,
                {**found.observed, "held_for": (facts.now - since).total_seconds()},
            )
        verdict = verdict or found
    return Evaluation(verdict, clocks)


def unchanged_until(
    policies: Sequence[Policy],
    view: BatchView,
    progress_at: datetime | None,
    pending: Mapping[str, datetime],
    now: datetime,
) -> datetime | None:
    """Until when every verdict on this batch stays as it is at ``now`` if nothing but
    the clock moves: the next moment a clock-driven condition (``age_above``,
    ``expires_within``, ``stalled_for``) or a ``for:`` clock can flip. None: it may
    change at any poll (``eta_after_expiry`` reads the rate between two polls)."""
    moments = []
    for policy in policies:
        when = policy.when
        if when.eta_after_expiry:
            return None
        moments += time_triggers(policy, view)
        if when.stalled_for is not None and progress_at is not None:
            moments.append(progress_at + when.stalled_for)
        if policy.for_ is not None and policy.name in pending:
            moments.append(pending[policy.name] + policy.for_)
    ahead = [m for m in moments if m >= now]  # strict conditions flip just after
    return min(ahead, default=datetime.max.replace(tzinfo=now.tzinfo))


def time_triggers(policy: Policy, view: BatchView) -> list[datetime]:
    """The moments at which this policy's clock-driven conditions start to hold for the
    batch (``age_above``, ``expires_within``): adaptive polling comes back then."""
    when, moments = policy.when, []
    if when.age_above is not None and view.created_at is not None:
        moments.append(view.created_at + when.age_above)
    if when.expires_within is not None and view.expires_at is not None:
        moments.append(view.expires_at - when.expires_within)
    return moments


def describe(policy: Policy) -> str:
    """One line saying what a policy does, as ``check-config`` prints it."""
    when = policy.when.model_dump(exclude_none=True, mode="json")
    if not {"failure_ratio_above", "projected_cost_usd_above"} & when.keys():
        when.pop("min_requests", None)
    if "eta_after_expiry" not in when:
        when.pop("finalizing_allowance", None)
    if policy.for_ is not None:
        when["for"] = format_duration(policy.for_)
    match = policy.match.model_dump(exclude_none=True)
    parts: Iterable[str] = (f"{k}={v}" for k, v in {**match, **when}.items())
    return f"{policy.name}: {policy.action} when " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class ConditionRow:
    """One condition of a policy on one batch: its observed value (None: unknown, and
    why) against its threshold."""

    condition: str
    threshold: Any
    observed: Any
    holds: bool
    unknown: str | None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class ForClock:
    """A policy's ``for:`` clock: how long it must hold, since when it has, how long."""

    needed_s: float
    since: datetime | None
    held_s: float


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One policy on one batch, as ``explain`` shows it."""

    policy: str
    action: str
    applies: str  # "yes", or "no: why"
    conditions: tuple[ConditionRow, ...]
    holds: bool
    clock: ForClock | None = None

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"policy": self.policy, "action": self.action}
        row |= {"applies": self.applies, "conditions": [c.as_dict() for c in self.conditions]}
        row["holds"] = self.holds
        if self.clock is not None:
            since = self.clock.since
            row["for"] = {
                "needed_s": self.clock.needed_s,
                "since": iso(since),
                "held_s": self.clock.held_s,
            }
        return row


def policy_rows(
    policies: Sequence[Policy], facts: Facts, pending: Mapping[str, datetime] | None = None
) -> list[PolicyRow]:
    """Each policy in order on one batch, as ``explain`` shows it: whether it applies
    (status, match), each condition's observed value against its threshold (None:
    unknown), whether it holds, and its ``for:`` clock."""
    return [_row(policy, facts, pending or {}) for policy in policies]


def _row(policy: Policy, facts: Facts, pending: Mapping[str, datetime]) -> PolicyRow:
    view, when = facts.view, policy.when
    applies = "yes"
    if view.status not in when.statuses:
        applies = f"no: status {view.status} is not one of {sorted(when.statuses)}"
    elif not policy.match.matches(view):
        applies = f"no: match {policy.match.model_dump(exclude_none=True)}"
    conditions = tuple(
        _condition(name, getattr(when, name), condition, when, facts)
        for name, condition in CONDITIONS.items()
        if getattr(when, name) is not None
    )
    holds = applies == "yes" and all(c.holds for c in conditions)
    clock = None
    if policy.for_ is not None:
        since = pending.get(policy.name) if holds else None
        held = (facts.now - since).total_seconds() if since else 0.0
        clock = ForClock(policy.for_.total_seconds(), since, held)
    return PolicyRow(policy.name, policy.action, applies, conditions, holds, clock)


def _condition(
    name: str, threshold: Any, condition: Condition, when: When, facts: Facts
) -> ConditionRow:
    value = condition.observe(when, facts)
    return ConditionRow(
        condition=name,
        threshold=_jsonable(threshold),
        observed=None if value is None else _jsonable(value),
        holds=value is not None and condition.holds(value, threshold),
        unknown=None if value is not None else _unknown(name, facts),
    )


def _unknown(name: str, facts: Facts) -> str:
    """Why a condition has no value yet."""
    view = facts.view
    if name.startswith("estimated_"):
        return "no estimate: input file not read yet or unreadable, or a model without a price"
    if name in ("cost_usd_above", "projected_cost_usd_above") and facts.cost is None:
        return "no usage yet, or no price for the model"
    if view.counts is None:
        return "no request counts yet"
    if name in ("failure_ratio_above", "projected_cost_usd_above"):
        return "too few finished requests (min_requests)"
    return "not known yet"
