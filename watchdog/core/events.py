"""The audit log's vocabulary: every event kind (one enum, the contract's list) and the
``Event`` a tick records, plus how loudly each kind is logged. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """Every ``batch_events.kind`` (DESIGN.md: tables and event kinds)."""

    TRACKED = "tracked"
    UNTRACKED = "untracked"
    STATUS_CHANGED = "status_changed"
    COUNTS_CHANGED = "counts_changed"
    POLICY_MATCHED = "policy_matched"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_SUCCEEDED = "cancel_succeeded"
    CANCEL_FAILED = "cancel_failed"
    POLL_FAILED = "poll_failed"
    PRICING_MISSING = "pricing_missing"
    EXEMPTED = "exempted"
    UNEXEMPTED = "unexempted"
    CANCEL_STUCK = "cancel_stuck"
    CANCEL_SETTLED = "cancel_settled"
    SAFETY_TRIPPED = "safety_tripped"
    SAFETY_RESUMED = "safety_resumed"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    PROVIDER_RECOVERED = "provider_recovered"
    BACKLOG = "backlog"
    CANCEL_ABANDONED = "cancel_abandoned"
    CLOCK_SKEW = "clock_skew"
    CLOCK_STEPPED = "clock_stepped"
    BUDGET_THRESHOLD = "budget_threshold"
    BUDGET_EXCEEDED = "budget_exceeded"
    DISCOVERY_INCOMPLETE = "discovery_incomplete"
    CANCEL_ASKED = "cancel_asked"  # an operator asked (API): the next tick plans it
    ESTIMATE_FAILED = "estimate_failed"  # its input file could not be read: judged without


# How loudly a kind is logged once it is committed (info unless listed here).
LEVELS: Mapping[Kind, str] = {
    Kind.COUNTS_CHANGED: "debug",  # recorded on every poll of a running batch: not news
    Kind.POLL_FAILED: "warning",
    Kind.PRICING_MISSING: "warning",
    Kind.CANCEL_FAILED: "warning",
    Kind.CANCEL_STUCK: "warning",
    Kind.CANCEL_ABANDONED: "warning",
    Kind.SAFETY_TRIPPED: "error",
    Kind.SAFETY_RESUMED: "warning",
    Kind.PROVIDER_UNAVAILABLE: "warning",
    Kind.BACKLOG: "warning",
    Kind.CLOCK_SKEW: "error",
    Kind.CLOCK_STEPPED: "warning",
    Kind.BUDGET_THRESHOLD: "warning",
    Kind.BUDGET_EXCEEDED: "error",
    Kind.DISCOVERY_INCOMPLETE: "warning",
    Kind.ESTIMATE_FAILED: "warning",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the audit log. ``level`` only says how to log it (not stored)."""

    at: datetime
    provider: str | None  # None for daemon-wide events (safety_tripped, backlog, …)
    batch_id: str | None
    kind: Kind
    from_status: str | None = None
    to_status: str | None = None
    policy: str | None = None
    detail: Mapping[str, Any] | None = None
    level: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str | None, str | None]:
        return (self.provider, self.batch_id)

    @property
    def log_level(self) -> str:
        return self.level or LEVELS.get(self.kind, "info")
