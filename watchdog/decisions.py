"""Verdicts to a plan: which batches to cancel now, and why the others are not.
The one place that enforces "never twice, never a non-active batch, dry-run, caps". Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from watchdog.models import ACTIVE

MAX_CANCEL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """A batch some policy wants cancelled, with its cancel history."""

    provider: str
    batch_id: str
    status: str | None
    policy: str
    cancel_outcome: str | None = None
    cancel_attempts: int = 0


@dataclass(slots=True)
class Plan:
    cancel: list[Candidate] = field(default_factory=list)
    held: list[tuple[Candidate, str]] = field(default_factory=list)


def hold_reason(candidate: Candidate) -> str | None:
    """Why this batch must not be cancelled whatever the settings, or None."""
    if candidate.status not in ACTIVE:
        return f"status {candidate.status!r} is not cancellable"
    if candidate.cancel_outcome == "succeeded":
        return "already cancelled once"
    if candidate.cancel_attempts >= MAX_CANCEL_ATTEMPTS:
        return f"gave up after {candidate.cancel_attempts} cancel attempts"
    return None


def plan(candidates: Sequence[Candidate], *, dry_run: bool, max_cancels: int) -> Plan:
    """Split candidates into cancels to send now and holds with their reasons."""
    result = Plan()
    for candidate in candidates:
        reason = hold_reason(candidate)
        if reason is None and dry_run:
            reason = "dry run"
        if reason is None and len(result.cancel) >= max_cancels:
            reason = f"max_cancels_per_tick ({max_cancels}) reached"
        if reason is None:
            result.cancel.append(candidate)
        else:
            result.held.append((candidate, reason))
    return result
