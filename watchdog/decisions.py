"""Verdicts to a plan: which batches to cancel now, and why the others are not.
The one place that enforces "never twice, never a non-active batch, dry-run, caps". Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

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
    exempt: str | None = None  # why it must not be cancelled (metadata, a silence)


@dataclass(slots=True)
class Plan:
    cancel: list[Candidate] = field(default_factory=list)
    held: list[tuple[Candidate, str]] = field(default_factory=list)
    capped: int = 0  # cancels the limit held back: more than that trips the safety


def hold_reason(candidate: Candidate) -> str | None:
    """Why this batch must not be cancelled whatever the settings, or None."""
    if candidate.status not in ACTIVE:
        return f"status {candidate.status!r} is not cancellable"
    if candidate.cancel_outcome == "succeeded":
        return "already cancelled once"
    if candidate.cancel_attempts >= MAX_CANCEL_ATTEMPTS:
        return f"gave up after {candidate.cancel_attempts} cancel attempts"
    if candidate.exempt is not None:
        return f"exempt: {candidate.exempt}"
    return None


def exemption(
    metadata: Mapping[str, str] | None,
    exempt_metadata: Mapping[str, str],
    until: datetime | None,
    reason: str | None,
    now: datetime,
) -> str | None:
    """Why a batch is exempt from cancels right now, or None."""
    meta = metadata or {}
    if exempt_metadata and all(meta.get(k) == v for k, v in exempt_metadata.items()):
        pairs = ", ".join(f"{k}={v}" for k, v in exempt_metadata.items())
        return f"metadata {pairs}"
    if until is not None and now < until:
        return f"silenced until {until.isoformat()}" + (f": {reason}" if reason else "")
    return None


def plan(
    candidates: Sequence[Candidate],
    *,
    dry_run: bool,
    max_cancels: int,
    alert_only: str | None = None,
) -> Plan:
    """Split candidates into cancels to send now and holds with their reasons."""
    result = Plan()
    for candidate in candidates:
        reason = hold_reason(candidate)
        if reason is None and dry_run:
            reason = "dry run"
        if reason is None and alert_only is not None:
            reason = alert_only
        if reason is None and len(result.cancel) >= max_cancels:
            reason = f"cancel limit ({max_cancels} now) reached"
            result.capped += 1
        if reason is None:
            result.cancel.append(candidate)
        else:
            result.held.append((candidate, reason))
    return result
