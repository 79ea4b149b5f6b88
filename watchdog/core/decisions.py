"""Verdicts to a plan: which batches to cancel now, and why the others are not; and
what a cancel's answer means. The one place that enforces "never twice, never a
non-active batch, dry-run, caps, bounded attempts". Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from watchdog.core.durations import iso
from watchdog.core.models import ACTIVE, CANCELLING, TERMINAL
from watchdog.core.rows import Tracked

MAX_CANCEL_ATTEMPTS = 3  # requests that may have reached the provider
FINAL = frozenset({"refused", "abandoned"})  # outcomes after which no cancel is sent


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
    blocked: str | None = None  # why no cancel may go out now (the local clock is off)


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
    if candidate.cancel_outcome in FINAL:
        return f"an earlier cancel was {candidate.cancel_outcome}: not sent again"
    if candidate.cancel_attempts >= MAX_CANCEL_ATTEMPTS:
        return f"gave up after {candidate.cancel_attempts} cancel attempts"
    if candidate.exempt is not None:
        return f"exempt: {candidate.exempt}"
    if candidate.blocked is not None:
        return candidate.blocked
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
        return f"silenced until {iso(until)}" + (f": {reason}" if reason else "")
    return None


def exempt_from(tracked: Tracked, exempt_metadata: Mapping[str, str], now: datetime) -> str | None:
    """Why this tracked batch is exempt from cancels right now (its metadata or its
    silence), or None."""
    return exemption(
        tracked.view.metadata, exempt_metadata, tracked.exempt_until, tracked.exempt_reason, now
    )


def candidate_of(
    tracked: Tracked,
    policy: str,
    exempt_metadata: Mapping[str, str],
    now: datetime,
    blocked: str | None = None,
) -> Candidate:
    """A tracked batch some policy (or budget) wants cancelled, as the plan sees it."""
    return Candidate(
        *tracked.key,
        status=tracked.view.status,
        policy=policy,
        cancel_outcome=tracked.cancel_outcome,
        cancel_attempts=tracked.cancel_attempts,
        exempt=exempt_from(tracked, exempt_metadata, now),
        blocked=blocked,
    )


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


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back for one cancel request, in the provider client's terms."""

    status: str | None = None  # the batch's status in a 2xx answer
    http_status: int | None = None  # of a failed request
    refused: bool = False  # 400/409: the provider says the batch is finished
    temporary: bool = False  # worth trying again (network, timeout, 429, 5xx)
    unsent: bool = False  # certainly never acted on (refused connection, 429)
    retry_after: float | None = None  # the provider's own wait, seconds


@dataclass(frozen=True, slots=True)
class Settled:
    """What a cancel's answer means: the outcome to record, the attempts and transient
    retries it leaves, why, and how soon to look at the batch again."""

    outcome: str  # succeeded | failed | refused | abandoned
    reason: str
    attempts: int
    retries: int = 0
    retry_in: timedelta | None = None

    @property
    def abandoned(self) -> bool:
        return self.outcome == "abandoned"


MAX_BACKOFF = timedelta(minutes=5)


def settle(answer: Answer, attempts: int, retries: int, follow_up: timedelta) -> Settled:
    """Judge a cancel by the batch's status after it, not by a 200: only cancelling or
    cancelled is success. 400/409 (finished) and 404 are definite: never sent again. A
    transient failure (network, timeout, 429, 5xx) is no attempt: the batch is looked at
    again after a backoff (or the provider's Retry-After) and, if the poll shows it still
    active, the cancel is sent again — whatever reached the provider is settled by that
    poll first. An attempt is an answer that reached the provider and did not take (a
    200 leaving the batch running, a 401); the third abandons the cancel."""
    if answer.status in (CANCELLING, "cancelled"):
        return Settled("succeeded", "taken", attempts + 1)
    if answer.refused or answer.status in TERMINAL:
        return Settled("refused", "already_terminal", attempts + 1)
    if answer.http_status == 404:
        return Settled("refused", "not_found", attempts + 1)
    if answer.temporary:
        backoff = min(follow_up * 2**retries, max(MAX_BACKOFF, follow_up))
        wait = max(timedelta(seconds=answer.retry_after or 0), backoff)
        reason = "unsent" if answer.unsent else "request_failed"
        return Settled("failed", reason, attempts, retries + 1, wait)
    reason = "not_taken" if answer.status is not None else "refused_by_provider"
    if attempts + 1 >= MAX_CANCEL_ATTEMPTS:
        return Settled("abandoned", reason, attempts + 1)
    return Settled("failed", reason, attempts + 1, 0, follow_up)
