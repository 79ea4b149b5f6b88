"""Steps "record the request" and "settle" of a cancel, pure: the row change and
event that go out before a cancel is sent, and what its answer means for the row,
the audit log and the next poll (the meaning itself is decisions.settle)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from watchdog.core.decisions import Answer, Settled, settle
from watchdog.core.errors import CancelRefused, ProviderError, TemporaryError
from watchdog.core.events import Event, Kind
from watchdog.core.models import ACTIVE, TERMINAL, BatchObject
from watchdog.core.observe import Judging, Observation, absorb, event
from watchdog.core.pricing import projected_cost
from watchdog.core.rows import Change, Tracked


def request(obs: Observation, now: datetime, owner: str, lease: timedelta) -> Observation:
    """The observation with ``cancel_requested`` added, to be written before the request
    goes out. The batch stays this replica's (its lease renewed) until the outcome is
    recorded, so no other replica polls it, judges it and sends a second cancel
    meanwhile. It is not an attempt yet: a crash here must not use one up."""
    tracked, verdict = obs.after, obs.verdict
    assert verdict is not None
    requested = event(
        tracked,
        Kind.CANCEL_REQUESTED,
        now,
        policy=verdict.policy,
        from_status=tracked.view.status,
        attempt=tracked.cancel_attempts + 1,
    )
    change = replace(obs.change)
    change.merge(
        Change(
            *tracked.key,
            cancel_policy=verdict.policy,
            cancel_requested_at=now,
            cancel_outcome=None,
            cancel_projected_usd=projected_cost(obs.cost, tracked.view.counts, 1),
            lease_owner=owner,
            lease_expires_at=now + lease,
        )
    )
    after = replace(tracked, cancel_policy=verdict.policy)
    return replace(obs, after=after, change=change, events=[*obs.events, requested])


def answer_of(answer: BatchObject | ProviderError) -> Answer:
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


@dataclass(slots=True)
class Outcome:
    """A cancel's answer, recorded: the row change, the events, and the batch as now
    known. ``refused``: the provider says it is finished; learn its state by a GET."""

    tracked: Tracked
    settled: Settled
    change: Change
    events: list[Event] = field(default_factory=list)
    refused: str | None = None


def outcome(
    tracked: Tracked, answer: BatchObject | ProviderError, now: datetime, judging: Judging
) -> Outcome:
    """Record what the cancel's answer means and give the lease back; a batch object in
    the answer is taken in like a poll's."""
    settled = settle(
        answer_of(answer), tracked.cancel_attempts, tracked.cancel_retries, judging.follow_up
    )
    change = Change(
        *tracked.key,
        cancel_outcome=settled.outcome,
        cancel_finished_at=now,
        cancel_attempts=settled.attempts,
        cancel_retries=settled.retries,
        lease_owner=None,
        lease_expires_at=None,
    )
    done = Outcome(tracked, settled, change, _recorded(tracked, answer, settled, now))
    if settled.outcome == "succeeded":
        done.tracked = replace(tracked, cancel_outcome="succeeded")
    if isinstance(answer, BatchObject):
        take_in(done, answer, now, judging)
    elif isinstance(answer, CancelRefused):
        done.refused = str(answer)
    return done


def take_in(done: Outcome, batch: BatchObject, now: datetime, judging: Judging) -> None:
    """The batch's state as the provider now gives it."""
    seen = absorb(done.tracked, batch, now, judging)
    done.change.merge(seen.change)
    done.events += seen.events
    done.tracked = seen.after


def after_refusal(done: Outcome, now: datetime) -> None:
    """A refused cancel of a batch that still runs: say so, never resend."""
    if done.refused is not None and done.tracked.view.status in ACTIVE:
        why = f"the provider refused the cancel ({done.refused}) but the batch is still "
        done.events.append(
            _abandoned(
                done.tracked, done.settled.attempts, why + str(done.tracked.view.status), now
            )
        )


def finish(done: Outcome, now: datetime) -> Outcome:
    """The follow-up poll: sooner when a transient failure asks for a retry."""
    retry_in = done.settled.retry_in
    if retry_in is not None and done.tracked.view.status not in TERMINAL:
        done.change.next_poll_at = now + retry_in
    return done


def _recorded(
    tracked: Tracked, answer: BatchObject | ProviderError, settled: Settled, now: datetime
) -> list[Event]:
    policy = tracked.cancel_policy
    if settled.outcome == "succeeded":
        to_status = answer.status if isinstance(answer, BatchObject) else None
        return [
            event(
                tracked,
                Kind.CANCEL_SUCCEEDED,
                now,
                policy=policy,
                from_status=tracked.view.status,
                to_status=to_status,
                attempt=settled.attempts,
            )
        ]
    error = f"batch still {answer.status}" if isinstance(answer, BatchObject) else str(answer)
    failed = event(
        tracked,
        Kind.CANCEL_FAILED,
        now,
        policy=policy,
        from_status=tracked.view.status,
        error=error,
        http_status=None if isinstance(answer, BatchObject) else answer.status,
        reason=settled.reason,
        outcome=settled.outcome,
        attempt=settled.attempts,
        retry_in_s=None if settled.retry_in is None else settled.retry_in.total_seconds(),
    )
    if not settled.abandoned:
        return [failed]
    why = f"{settled.attempts} answers from the provider and none took: {error}"
    return [failed, _abandoned(tracked, settled.attempts, why, now)]


def _abandoned(tracked: Tracked, attempts: int, why: str, now: datetime) -> Event:
    """A cancel given up: a warning event with why."""
    return event(
        tracked,
        Kind.CANCEL_ABANDONED,
        now,
        policy=tracked.cancel_policy,
        from_status=tracked.view.status,
        attempts=attempts,
        why=why,
    )
