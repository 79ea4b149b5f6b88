"""The tick's pure steps from tables of values: observe (an answer against what was
known) and cancels (what a cancel's answer means). No server, no database, no clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from watchdog.core import cancels
from watchdog.core.cadence import Cadence
from watchdog.core.errors import CancelRefused, NotFound, PermanentError, TemporaryError
from watchdog.core.events import Event, Kind
from watchdog.core.models import BatchObject, BatchView
from watchdog.core.observe import Judging, Rules, observe
from watchdog.core.policies import Policy
from watchdog.core.pricing import Price
from watchdog.core.rows import UNSET, Tracked

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
CAP = Policy.model_validate({"name": "cap", "when": {"cost_usd_above": 5}, "action": "cancel"})
PRICE = Price.model_validate({"model": "m", "input": 0.03, "output": 0.05})
JUDGING = Judging(Rules((CAP,), (PRICE,)), Cadence(timedelta(seconds=60), adaptive=False))


def tracked(status: str | None = "in_progress", **fields: Any) -> Tracked:
    view = BatchView("p", "b", status, model="m", created_at=NOW - timedelta(hours=1))
    base: dict[str, Any] = {
        "cost_usd": None,
        "matched_policy": None,
        "poll_failures": 0,
        "last_error": None,
        "cancel_policy": None,
        "cancel_requested_at": None,
        "cancel_attempts": 0,
        "cancel_outcome": None,
        "pricing_missing_at": None,
        "tracked_at": NOW - timedelta(hours=1),
        "last_polled_at": NOW - timedelta(minutes=1),
    }
    return Tracked(view, **(base | fields))


def wire(status: str = "in_progress", tokens: int = 0, **fields: Any) -> BatchObject:
    usage = {"input_tokens": tokens, "output_tokens": tokens, "total_tokens": 2 * tokens}
    data = {"id": "b", "status": status, "model": "m", "created_at": T - 3600, "usage": usage}
    return BatchObject.model_validate(data | fields)


def kinds(events: list[Event]) -> list[str]:
    return [str(e.kind) for e in events]


LATER = NOW + timedelta(seconds=55)  # an interval, less the slack for an early tick


@pytest.mark.parametrize(
    ("before", "answer", "events", "next_poll_at"),
    [
        # first sight: from null; due again an interval later
        (tracked(None), wire(), ["status_changed"], LATER),
        # unchanged: bookkeeping only
        (tracked(), wire(), [], LATER),
        # finished: never polled again
        (tracked(), wire("completed"), ["status_changed"], None),
        # cancelling: followed more closely (cancel_poll_interval, less its slack)
        (tracked(), wire("cancelling"), ["status_changed"], NOW + timedelta(seconds=13.5)),
        # over the cap: matched (whether to cancel is decided later)
        (tracked(), wire(tokens=100_000_000), ["policy_matched"], LATER),
        # a failure: one event per streak of the same failure
        (tracked(), PermanentError("HTTP 400: no"), ["poll_failed"], LATER),
        (tracked(last_error="HTTP 400: no"), PermanentError("HTTP 400: no"), [], LATER),
        # an implausible answer fails its poll instead of being believed
        (tracked(), wire(created_at=T + 3 * 86_400), ["poll_failed"], LATER),
    ],
)
def test_observe(
    before: Tracked, answer: Any, events: list[str], next_poll_at: datetime | None
) -> None:
    obs = observe(before, answer, NOW, JUDGING)
    assert kinds(obs.events) == events
    assert obs.ok == ("poll_failed" not in events and isinstance(answer, BatchObject))
    assert obs.change.next_poll_at == next_poll_at
    assert obs.change.lease_owner is None  # the lease goes back with the write
    if "policy_matched" in events:
        assert obs.verdict is not None and obs.verdict.policy == "cap"
        assert obs.cost == Decimal(8)


def test_observe_touches_nothing_it_was_given() -> None:
    """Pure: the claimed row is not changed; the batch as now known is a new value."""
    before = tracked()
    snapshot = repr(before)
    obs = observe(before, wire("finalizing"), NOW, JUDGING)
    assert repr(before) == snapshot and obs.after.view.status == "finalizing"
    assert obs.change.wire is not None and obs.change.cost_usd == Decimal(0)


def test_an_unchanged_batch_writes_only_its_schedule() -> None:
    """No wire columns, no bookkeeping that would write what the row holds: when it was
    polled, when it is due again, the lease given back."""
    first = observe(tracked(), wire(), NOW, JUDGING)
    assert first.change.wire is not None and first.change.cost_usd == Decimal(0)
    again = observe(first.after, wire(), NOW + timedelta(minutes=1), JUDGING)
    assert again.events == [] and again.change.cancel_outcome is UNSET
    written = set(again.change.set())
    assert written == {"last_polled_at", "next_poll_at", "lease_owner", "lease_expires_at"}


@pytest.mark.parametrize(
    ("answered_after", "status", "due_after"),
    [
        (0, "in_progress", 55),  # the interval less its slack (5 s), from the tick's start
        (40, "in_progress", 55),  # answered late in the tick: still with its tick's batches
        (90, "in_progress", 55),  # a tick longer than the interval: due again at once
        (10, "cancelling", 13.5),  # a cancel is followed every 15 s (less 1.5 s of slack)
        (40, "completed", None),
    ],
)
def test_the_next_poll_counts_from_the_tick(
    answered_after: int, status: str, due_after: float | None
) -> None:
    """What one tick polled falls due together (one list pass next time), however late
    in the tick each answer came."""
    judging = replace(JUDGING, tick_start=NOW)
    now = NOW + timedelta(seconds=answered_after)
    obs = observe(tracked(), wire(status), now, judging)
    due = obs.change.next_poll_at
    assert due == (None if due_after is None else NOW + timedelta(seconds=due_after))


SENT = tracked(cancel_policy="cap", cancel_requested_at=NOW)


@pytest.mark.parametrize(
    ("answer", "outcome", "events", "refused"),
    [
        (wire("cancelling"), "succeeded", ["cancel_succeeded", "status_changed"], False),
        (wire("in_progress"), "failed", ["cancel_failed"], False),
        (CancelRefused("HTTP 409: done", status=409), "refused", ["cancel_failed"], True),
        (NotFound("HTTP 404: gone", status=404), "refused", ["cancel_failed"], False),
        (TemporaryError("HTTP 503", status=503), "failed", ["cancel_failed"], False),
    ],
)
def test_cancel_outcomes(answer: Any, outcome: str, events: list[str], refused: bool) -> None:
    done = cancels.finish(cancels.outcome(SENT, answer, NOW, JUDGING), NOW)
    assert done.settled.outcome == outcome and kinds(done.events) == events
    assert (done.refused is not None) == refused
    assert done.change.lease_owner is None and done.change.cancel_outcome == outcome
    if outcome != "succeeded":
        assert done.events[0].detail is not None
        assert done.events[0].detail["outcome"] == outcome


def test_a_third_answer_that_did_not_take_abandons() -> None:
    done = cancels.outcome(
        tracked(cancel_policy="cap", cancel_attempts=2), wire("in_progress"), NOW, JUDGING
    )
    assert kinds(done.events) == ["cancel_failed", "cancel_abandoned"]


def test_a_refused_cancel_of_a_running_batch_is_given_up() -> None:
    done = cancels.outcome(SENT, CancelRefused("HTTP 400: no", status=400), NOW, JUDGING)
    cancels.take_in(done, wire("in_progress"), NOW, JUDGING)
    cancels.after_refusal(done, NOW)
    assert kinds(done.events)[-1] == Kind.CANCEL_ABANDONED


async def test_read_ahead_produces_the_next_item_while_this_one_is_worked_on() -> None:
    """The next chunk's claim and requests run while the caller judges this one; when
    the caller fails, the source is closed and nothing is left running."""
    import asyncio
    import contextlib

    from watchdog.daemon.refresh import read_ahead

    log: list[str] = []
    closed = asyncio.Event()

    async def source() -> Any:
        try:
            for i in range(3):
                log.append(f"make {i}")
                await asyncio.sleep(0)
                yield i
        finally:
            closed.set()

    async for item in read_ahead(source()):
        log.append(f"start {item}")
        await asyncio.sleep(0.01)  # working on it: the next one is made meanwhile
        log.append(f"done {item}")
    assert log.index("make 1") < log.index("done 0")
    assert log.index("make 2") < log.index("done 1")
    assert closed.is_set()

    closed.clear()
    with pytest.raises(RuntimeError, match="judging failed"):
        async with contextlib.aclosing(read_ahead(source())) as items:  # as the engine does
            async for _ in items:
                raise RuntimeError("judging failed")
    assert closed.is_set()
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
