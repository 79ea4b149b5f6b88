"""Pooled budgets: their specs (strict schemas) and their pure assessment over tracked
batches — spend, committed, the thresholds crossed, and which running batches to cancel
so that the projection fits. No I/O, no clock: ``now`` is handed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from watchdog.core.decisions import FINAL, MAX_CANCEL_ATTEMPTS, exempt_from
from watchdog.core.durations import iso, parse_duration
from watchdog.core.estimates import Range, estimated_cost
from watchdog.core.events import Event, Kind
from watchdog.core.models import ACTIVE, BatchView
from watchdog.core.policies import Match, Verdict
from watchdog.core.pricing import MAX_USD, Price, projected_cost, usd
from watchdog.core.rows import Tracked
from watchdog.core.schema import Strict

CALENDAR = ("day", "week", "month")
GROUP_KEYS = ("provider", "model", "metadata.KEY", "labels.KEY")
PATHS = ("metadata.", "labels.")  # a key under the batch's metadata, or under our labels
Group = tuple[str, ...]


class Budget(Strict):
    """A pooled spending limit over the batches ``match`` selects, one per distinct
    ``group_by`` value, over a rolling or calendar ``window``."""

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the budget's name (its cancels are recorded under it)",
    )  # fmt: skip
    match: Match = Field(default=Match(), description="which batches it pools (as policies')")
    group_by: tuple[str, ...] = Field(
        default=(), description="one budget per distinct value of these: provider, model, "
        "metadata.KEY, labels.KEY",
    )  # fmt: skip
    limit_usd: Decimal = Field(gt=0, le=MAX_USD, description="USD the window may commit")
    window: str = Field(
        default="1d", description="rolling (a duration: 1d, 12h) or calendar: day, week, month"
    )
    timezone: str = Field(default="UTC", description="where calendar windows begin")
    warn_at: tuple[float, ...] = Field(default=(), description="fractions of the limit")
    action: Literal["cancel", "alert"] = Field(
        default="alert", description="cancel running batches until it fits, or only record"
    )
    order: Literal["newest_first", "largest_remaining_first"] = Field(
        default="newest_first", description="which running batches a cancel chooses first"
    )

    @field_validator("group_by")
    @classmethod
    def _known_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            keyed = any(path.startswith(p) and len(path) > len(p) for p in PATHS)
            if path not in ("provider", "model") and not keyed:
                raise ValueError(f"unknown path {path!r}; valid: {', '.join(GROUP_KEYS)}")
        return paths

    @field_validator("window")
    @classmethod
    def _window(cls, value: Any) -> str:
        text = str(value).strip()
        if text not in CALENDAR:
            try:
                if parse_duration(text) <= timedelta(0):
                    raise ValueError(f"invalid window {text!r}: must be longer than 0")
            except ValueError as exc:
                raise ValueError(f"{exc}; or a calendar window: {', '.join(CALENDAR)}") from None
        return text

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("warn_at")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError("each threshold is a fraction of the limit, between 0 and 1")
        return tuple(sorted(set(values)))

    @model_validator(mode="after")
    def _window_in_zone(self) -> Budget:
        if self.timezone != "UTC" and self.window not in CALENDAR:
            raise ValueError("timezone: only calendar windows (day, week, month) have one")
        return self

    def start(self, now: datetime) -> datetime:
        """Where the window that holds ``now`` begins."""
        if self.window not in CALENDAR:
            return now - parse_duration(self.window)
        local = now.astimezone(ZoneInfo(self.timezone))
        day = local.date()
        if self.window == "week":
            day -= timedelta(days=day.weekday())
        elif self.window == "month":
            day = day.replace(day=1)
        return datetime.combine(day, time(), tzinfo=local.tzinfo).astimezone(now.tzinfo)

    def period(self, now: datetime) -> datetime:
        """What "once per window" counts in: a calendar window's start, or for a rolling
        window the window-long stretch of time (from the Unix epoch) that holds ``now``
        (its start moves with every tick, so it cannot be the unit itself)."""
        if self.window in CALENDAR:
            return self.start(now)
        length = parse_duration(self.window).total_seconds()
        stamp = now.timestamp()
        return datetime.fromtimestamp(stamp - stamp % length, now.tzinfo)

    def describe(self) -> str:
        """One line for check-config."""
        window = f"per {self.window}" + (f" ({self.timezone})" if self.timezone != "UTC" else "")
        m = self.match
        scope = [f"{k}={v}" for k, v in (("provider", m.provider), ("model", m.model)) if v]
        scope += [f"metadata.{k}={v}" for k, v in (m.metadata or {}).items()]
        text = f"{self.name}: ${self.limit_usd} {window}"
        text += f" of {', '.join(scope)}" if scope else " of every batch"
        text += f", one per {', '.join(self.group_by)}" if self.group_by else ""
        text += f"; {self.action}" + (f" {self.order}" if self.action == "cancel" else "")
        warn = ", ".join(f"{f:.0%}" for f in self.warn_at)
        return text + (f"; warn at {warn}" if warn else "")

    def group_of(self, view: BatchView) -> Group:
        return tuple(_value(view, path) for path in self.group_by)


def _value(view: BatchView, path: str) -> str:
    if path == "provider":
        return view.provider
    if path == "model":
        return view.model or ""
    if path.startswith("labels."):
        return (view.labels or {}).get(path.removeprefix("labels."), "")
    return (view.metadata or {}).get(path.removeprefix("metadata."), "")


@dataclass(frozen=True, slots=True)
class Spending:
    """One tracked batch as a budget sees it."""

    view: BatchView
    cost: Decimal | None
    stopping: bool = False  # a cancel took (the provider said so): nothing more to come
    exempt: bool = False  # never cancelled (metadata or a silence)
    spent_cancel: bool = False  # its cancel was refused or given up: never sent again
    backing_off: bool = False  # a cancel failed and waits for its retry (its next poll)
    estimated: Decimal | None = None  # its input file's estimate, upper bound

    @property
    def running(self) -> bool:
        return self.view.status in ACTIVE and not self.stopping

    @property
    def projected(self) -> bool:
        """Its projection is known (usage, and a finished request)."""
        return self.cost is not None and projected_cost(self.cost, self.view.counts, 1) is not None

    @property
    def remaining(self) -> Decimal | None:
        """Projected cost still to come (0 once it ended or was cancelled); while the
        projection is unknown, what its input file's estimate leaves above the spend so
        far; None: neither is known."""
        if not self.running:
            return Decimal(0)
        projected = projected_cost(self.cost, self.view.counts, 1)
        if projected is not None and self.cost is not None:
            return max(projected - self.cost, Decimal(0))
        if self.estimated is not None:
            return max(self.estimated - (self.cost or Decimal(0)), Decimal(0))
        return None

    @property
    def by_estimate(self) -> bool:
        """Its remaining cost is its estimate's (the projection is not known yet)."""
        return self.running and not self.projected and self.estimated is not None


def spending_of(
    tracked: Tracked,
    exempt_metadata: Mapping[str, str],
    now: datetime,
    prices: Sequence[Price] = (),
) -> Spending:
    """A tracked batch as a budget sees it (its estimate at ``prices``). Only a cancel
    that took stops its spending: one that failed is still running (and is sent again
    once its backoff is over), one refused or abandoned keeps counting and the budget
    chooses another batch."""
    exempt = exempt_from(tracked, exempt_metadata, now)
    outcome = tracked.cancel_outcome
    return Spending(
        tracked.view,
        tracked.cost_usd,
        stopping=outcome == "succeeded",
        exempt=exempt is not None,
        spent_cancel=outcome in FINAL or tracked.cancel_attempts >= MAX_CANCEL_ATTEMPTS,
        backing_off=outcome == "failed",
        estimated=_high(estimated_cost(prices, *_model(tracked), tracked.estimate)),
    )


def _model(tracked: Tracked) -> tuple[str, str | None]:
    return tracked.view.provider, tracked.view.model


def _high(found: Range | None) -> Decimal | None:
    return None if found is None else found.high


@dataclass(frozen=True, slots=True)
class Figures:
    """One budget group's figures as people read them; ``as_dict`` is the JSON of
    ``budgets --json`` and of the budget events' details."""

    budget: str
    group: dict[str, str]
    window: str
    window_start: datetime
    spend_usd: float | None
    committed_usd: float | None
    limit_usd: float | None
    unknown_cost: int
    unknown_remaining: int
    batches: int
    state: str  # ok, warn or over
    action: str
    to_cancel: tuple[str, ...]
    # committed_usd, split: spend plus the running batches' projections, and what the
    # input file estimates add for the running batches not projected yet (how many).
    committed_projected_usd: float | None = None
    committed_estimated_usd: float | None = None
    estimated: int = 0

    @property
    def unknown(self) -> int:
        return self.unknown_cost + self.unknown_remaining

    def as_dict(self) -> dict[str, Any]:
        found = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return found | {
            "window_start": iso(self.window_start),
            "to_cancel": list(self.to_cancel),
            "group": dict(self.group),
        }


@dataclass(slots=True)
class Assessment:
    """One budget group: what it spent, what it is committed to, what to do."""

    budget: Budget
    group: Group
    window_start: datetime
    spend: Decimal = Decimal(0)
    remaining: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)  # of remaining: from input file estimates
    by_estimate: int = 0  # batches whose remaining is their estimate's
    unknown_cost: int = 0  # batches whose cost is unknown: not counted, never as zero
    unknown_remaining: int = 0  # running batches whose projection is unknown
    members: list[Spending] = field(default_factory=list)  # counted one by one
    finished: int = 0  # and counted in the ledger's sums (ended: nothing to choose there)
    chosen: list[Spending] = field(default_factory=list)

    @property
    def batches(self) -> int:
        return len(self.members) + self.finished

    @property
    def committed(self) -> Decimal:
        return self.spend + self.remaining

    @property
    def limit(self) -> Decimal:
        return self.budget.limit_usd

    @property
    def over(self) -> bool:
        return self.committed > self.limit

    @property
    def key(self) -> str:
        """The group's name: the budget's, with its group values."""
        return self.budget.name + "".join(f"/{v}" for v in self.group)

    @property
    def state(self) -> str:
        """ok, warn (a threshold reached) or over."""
        return "over" if self.over else "warn" if self.crossed() else "ok"

    def counts(self, key: tuple[str, str]) -> bool:
        """Whether this batch (provider, id) is among the ones counted one by one."""
        return any((m.view.provider, m.view.batch_id) == key for m in self.members)

    def figures(self) -> Figures:
        """What people read of it (``budgets``, the page, ``explain``, its events)."""
        return Figures(
            budget=self.budget.name,
            group=dict(zip(self.budget.group_by, self.group, strict=True)),
            window=self.budget.window,
            window_start=self.window_start,
            spend_usd=usd(self.spend),
            committed_usd=usd(self.committed),
            limit_usd=usd(self.limit),
            unknown_cost=self.unknown_cost,
            unknown_remaining=self.unknown_remaining,
            batches=self.batches,
            state=self.state,
            action=self.budget.action,
            to_cancel=tuple(m.view.batch_id for m in self.chosen),
            committed_projected_usd=usd(self.committed - self.estimated),
            committed_estimated_usd=usd(self.estimated),
            estimated=self.by_estimate,
        )

    def crossed(self) -> list[float]:
        """The warn_at fractions the committed amount has reached."""
        return [f for f in self.budget.warn_at if self.committed >= self.limit * Decimal(str(f))]


@dataclass(slots=True)
class Sums:
    """A budget group's finished batches: their known cost, how many, how many unknown."""

    spend: Decimal = Decimal(0)
    count: int = 0
    unknown: int = 0

    def take(self, cost: Decimal | None, sign: int) -> None:
        self.count += sign
        if cost is None:
            self.unknown += sign
        else:
            self.spend += sign * cost


class Summed(Protocol):
    """What keeps the finished batches' sums per budget group (core.ledger.Ledger)."""

    def sums(self, budget: str) -> Mapping[Group, Sums]: ...


def assess(
    budgets: Sequence[Budget],
    batches: Iterable[Spending],
    now: datetime,
    ledger: Summed | None = None,
) -> list[Assessment]:
    """Every budget group's spend and commitment, and the batches to cancel in it.

    A batch counts in a window when it was created within it or is still running (its
    whole known cost: spend is not apportioned over time). Committed = spend + the
    projected remaining cost of the running batches. The finished batches come from the
    ``ledger``'s sums when one is given (the daemon keeps one: O(groups) a tick), else
    one by one among ``batches``."""
    found: dict[tuple[str, Group], Assessment] = {}
    for budget in budgets:
        start = budget.start(now)
        if not budget.group_by:  # shown (and exported) even while nothing counts in it
            found[(budget.name, ())] = Assessment(budget, (), start)
        for group, sums in (ledger.sums(budget.name) if ledger else {}).items():
            one = found.setdefault((budget.name, group), Assessment(budget, group, start))
            one.spend += sums.spend
            one.unknown_cost += sums.unknown
            one.finished += sums.count
    batches = list(batches)
    for budget in budgets:
        start = budget.start(now)
        for item in batches:
            if not budget.match.matches(item.view) or not _in_window(item, start):
                continue
            group = budget.group_of(item.view)
            one = found.setdefault((budget.name, group), Assessment(budget, group, start))
            _add(one, item)
    for one in found.values():
        if one.over and one.budget.action == "cancel":
            one.chosen = choose(one)
    return list(found.values())


def _in_window(item: Spending, start: datetime) -> bool:
    created = item.view.created_at
    return item.view.status in ACTIVE or (created is not None and created >= start)


def _add(one: Assessment, item: Spending) -> None:
    one.members.append(item)
    if item.cost is None:
        one.unknown_cost += 1
    else:
        one.spend += item.cost
    remaining = item.remaining
    if remaining is None:
        one.unknown_remaining += 1
    else:
        one.remaining += remaining
    if item.by_estimate and remaining is not None:
        one.estimated += remaining
        one.by_estimate += 1


def choose(one: Assessment) -> list[Spending]:
    """The running batches to cancel, in the budget's order, until the projection fits
    (only as many as needed); exempt ones, those of unknown projection (cancelling them
    would fit nothing we can count) and those whose cancel was refused or given up
    (their spend goes on: the next one is chosen instead) are never chosen."""
    candidates = [
        m
        for m in one.members
        if m.running and not m.exempt and not m.spent_cancel and (m.remaining or 0) > 0
    ]
    if one.budget.order == "newest_first":
        candidates.sort(key=_created, reverse=True)
    else:
        candidates.sort(key=lambda m: m.remaining or 0, reverse=True)
    chosen, committed = [], one.committed
    for item in candidates:
        if committed <= one.limit:
            break
        chosen.append(item)
        committed -= item.remaining or 0
    return chosen


def _created(item: Spending) -> tuple[float, str]:
    created = item.view.created_at
    return (created.timestamp() if created else 0.0, item.view.batch_id)


@dataclass(slots=True)
class News:
    """What an assessment means against what was already said: the events to record,
    the memory to keep (per group: its window, the thresholds said, the batches the
    last ``budget_exceeded`` chose), and the batches to cancel, by key."""

    events: list[Event] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    condemned: dict[tuple[str, str], Assessment] = field(default_factory=dict)
    backing_off: set[tuple[str, str]] = field(default_factory=set)  # of the condemned


def news(found: Sequence[Assessment], memory: Mapping[str, Any], now: datetime) -> News:
    """``budget_threshold`` once per window and fraction; ``budget_exceeded`` once per
    window while over, and again only when it chooses other batches (so a dry run, or
    a cancel not yet taken, does not repeat it every tick)."""
    out = News()
    for one in found:
        start = one.budget.period(now).isoformat()
        was = memory.get(one.key) or {}
        was = was if was.get("window") == start else {}
        warned = list(was.get("warned", []))
        for fraction in one.crossed():
            if fraction not in warned:
                warned.append(fraction)
                out.events.append(_event(one, Kind.BUDGET_THRESHOLD, now, fraction=fraction))
        chosen = [f"{m.view.provider}/{m.view.batch_id}" for m in one.chosen]
        said = was.get("exceeded")
        if one.over and (said is None or (chosen and sorted(chosen) != sorted(said))):
            out.events.append(_event(one, Kind.BUDGET_EXCEEDED, now, chosen=_chosen(one)))
            said = chosen
        out.memory[one.key] = {"window": start, "warned": sorted(warned), "exceeded": said}
        out.condemned |= {(m.view.provider, m.view.batch_id): one for m in one.chosen}
        out.backing_off |= {(m.view.provider, m.view.batch_id) for m in one.chosen if m.backing_off}
    return out


def _event(one: Assessment, kind: Kind, now: datetime, **detail: Any) -> Event:
    """A budget event: the group's figures as ``budgets --json`` shows them, and what
    is news (a threshold, the batches chosen)."""
    said = {k: v for k, v in one.figures().as_dict().items() if k not in ("state", "to_cancel")}
    return Event(now, None, None, kind, policy=one.budget.name, detail=said | detail)


def _chosen(one: Assessment) -> list[dict[str, Any]]:
    return [
        {
            "provider": m.view.provider,
            "batch_id": m.view.batch_id,
            "remaining_usd": usd(m.remaining),
        }
        for m in one.chosen
    ]


def verdict(one: Assessment) -> Verdict:
    """The cancel a budget hands to the decisions, as a policy's would be."""
    observed = {"committed_usd": usd(one.committed), "limit_usd": usd(one.limit)}
    return Verdict(one.budget.name, "cancel", observed)
