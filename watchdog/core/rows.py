"""Typed rows between the steps and the store: ``Tracked`` (a claimed batch as the store
read it), ``Change`` (what a step sets on it), ``Spent`` (a batch as the report reads
it). No column names outside the store."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

from watchdog.core.estimates import Estimate
from watchdog.core.models import TERMINAL, BatchObject, BatchView


@dataclass(frozen=True, slots=True)
class Spent:
    """A tracked batch as the spend report reads it: what it groups on, what it cost,
    and what its cancel saved."""

    provider: str
    model: str | None
    metadata: dict[str, str] | None
    created_at: datetime | None
    cost_usd: Decimal | None
    cancel_policy: str | None
    matched_policy: str | None
    cancel_outcome: str | None
    cancel_projected_usd: Decimal | None
    labels: dict[str, str] | None = None
    status: str | None = None
    estimate: Estimate | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(slots=True)
class Tracked:
    """A claimed row of ``batches``: the last state seen and the daemon's bookkeeping."""

    view: BatchView
    cost_usd: Decimal | None
    matched_policy: str | None
    poll_failures: int
    last_error: str | None
    cancel_policy: str | None
    cancel_requested_at: datetime | None
    cancel_attempts: int
    cancel_outcome: str | None
    pricing_missing_at: datetime | None
    tracked_at: datetime | None
    last_polled_at: datetime | None = None
    progress_at: datetime | None = None
    pending: dict[str, datetime] = field(default_factory=dict)
    exempt_until: datetime | None = None
    exempt_reason: str | None = None
    cancel_projected_usd: Decimal | None = None
    cancel_stuck_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancel_retries: int = 0
    estimate: Estimate | None = None  # what its input file said (or why it could not)

    @property
    def key(self) -> tuple[str, str]:
        return (self.view.provider, self.view.batch_id)

    def copy_with(self, **values: Any) -> Tracked:
        """A copy with ``values`` set: what dataclasses.replace does, without building
        its arguments from the fields on every call (every poll makes a few)."""
        new = object.__new__(Tracked)
        for name in _TRACKED:
            setattr(new, name, values[name] if name in values else getattr(self, name))
        return new


_TRACKED = tuple(f.name for f in fields(Tracked))


class _Unset(Enum):
    TOKEN = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.TOKEN


KEPT = frozenset({"wire", "lease_owner", "lease_expires_at", "next_poll_at"})


@dataclass(slots=True)
class Change:
    """What to set on one batch's row; a field left ``UNSET`` is not written (``None``
    is written as NULL). ``wire`` sets every column mirroring the provider's object."""

    provider: str
    batch_id: str
    wire: BatchObject | None = None
    cost_usd: Decimal | _Unset | None = UNSET
    tracked_at: datetime | _Unset | None = UNSET
    last_polled_at: datetime | _Unset | None = UNSET
    next_poll_at: datetime | _Unset | None = UNSET
    poll_failures: int | _Unset = UNSET
    last_error: str | _Unset | None = UNSET
    progress_at: datetime | _Unset | None = UNSET
    pending: dict[str, datetime] | _Unset | None = UNSET
    matched_policy: str | _Unset | None = UNSET
    pricing_missing_at: datetime | _Unset | None = UNSET
    lease_owner: str | _Unset | None = UNSET
    lease_expires_at: datetime | _Unset | None = UNSET
    cancel_policy: str | _Unset | None = UNSET
    cancel_requested_at: datetime | _Unset | None = UNSET
    cancel_outcome: str | _Unset | None = UNSET
    cancel_finished_at: datetime | _Unset | None = UNSET
    cancel_attempts: int | _Unset = UNSET
    cancel_retries: int | _Unset = UNSET
    cancel_projected_usd: Decimal | _Unset | None = UNSET
    cancel_stuck_at: datetime | _Unset | None = UNSET
    finished_at: datetime | _Unset | None = UNSET

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.batch_id)

    def set(self) -> dict[str, Any]:
        """The fields given a value (``wire`` included when set), by name."""
        found = {name: value for name in _COLUMNS if (value := getattr(self, name)) is not UNSET}
        if self.wire is not None:
            found["wire"] = self.wire
        return found

    def merge(self, other: Change) -> None:
        """Take every field ``other`` sets (a later step's word wins)."""
        for name, value in other.set().items():
            setattr(self, name, value)

    def unchanged_dropped(self, tracked: Tracked) -> Change:
        """Itself, less the fields that would write what the row already holds (an
        unchanged poll then writes its schedule and lease, not its bookkeeping)."""
        for name, value in self.set().items():
            if name in KEPT or not hasattr(tracked, name):
                continue
            held = getattr(tracked, name)
            if value == held or (name == "pending" and (value or {}) == held):
                setattr(self, name, UNSET)
        return self


_COLUMNS = tuple(f.name for f in fields(Change))[3:]  # after provider, batch_id, wire


@dataclass(frozen=True, slots=True)
class Listed:
    """A tracked batch as ``list`` and the status page show it: what a claim reads, the
    metadata as the provider sent it (any JSON), its labels and its next poll."""

    tracked: Tracked
    metadata: Any
    labels: dict[str, str] | None
    next_poll_at: datetime | None
