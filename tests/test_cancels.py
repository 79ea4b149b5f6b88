"""A cancel is sent once, judged by what it did, retried only when that is safe, and
given up loudly (issue 11): transient failures back off and retry, a 400/409 is final,
a 200 that leaves the batch running is no success, a crash costs no attempt, a cancel
in flight stays its sender's, and the hourly limit holds across replicas."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import SQLITE_ONLY, Harness
from tests.test_safety import cancels, cost_cap, expensive
from watchdog.core.decisions import MAX_CANCEL_ATTEMPTS, Answer, settle
from watchdog.daemon.engine import Engine
from watchdog.sim.simulator import Fault

FOLLOW = timedelta(seconds=15)


@pytest.mark.parametrize(
    ("answer", "attempts", "retries", "outcome", "reason", "after", "retry_in"),
    [
        (Answer(status="cancelling"), 0, 2, "succeeded", "taken", 1, None),
        (Answer(status="cancelled"), 1, 0, "succeeded", "taken", 2, None),
        (Answer(status="completed"), 0, 0, "refused", "already_terminal", 1, None),
        (Answer(http_status=409, refused=True), 0, 0, "refused", "already_terminal", 1, None),
        (Answer(http_status=404), 0, 0, "refused", "not_found", 1, None),
        (Answer(status="in_progress"), 0, 0, "failed", "not_taken", 1, 15),
        (Answer(status="in_progress"), 2, 0, "abandoned", "not_taken", 3, None),
        (Answer(http_status=401), 2, 0, "abandoned", "refused_by_provider", 3, None),
        # Transient: no attempt used, a backoff doubling from the follow-up interval...
        (Answer(http_status=503, temporary=True), 2, 0, "failed", "request_failed", 2, 15),
        (Answer(http_status=503, temporary=True), 0, 3, "failed", "request_failed", 0, 120),
        (Answer(temporary=True), 0, 10, "failed", "request_failed", 0, 300),
        # ...or the provider's own Retry-After when longer.
        (
            Answer(http_status=429, temporary=True, unsent=True, retry_after=600),
            2,
            0,
            "failed",
            "unsent",
            2,
            600,
        ),
    ],
)
def test_what_a_cancel_answer_means(
    answer: Answer,
    attempts: int,
    retries: int,
    outcome: str,
    reason: str,
    after: int,
    retry_in: float | None,
) -> None:
    settled = settle(answer, attempts, retries, FOLLOW)
    assert (settled.outcome, settled.reason, settled.attempts) == (outcome, reason, after)
    wait = None if settled.retry_in is None else settled.retry_in.total_seconds()
    assert wait == retry_in


@SQLITE_ONLY
async def test_transient_failures_retry_until_the_cancel_lands(harness: Harness) -> None:
    """Three cancels answered 503 use up nothing: each is tried again after its backoff
    (once the poll shows the batch still running), and the fourth lands."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b")
    h.sim.simulator.faults.append(Fault("POST", "/batches/b/cancel", 503, times=3))
    await h.track("b")
    for _ in range(6):
        await h.tick(advance=130)
    kinds = await h.kinds("b")
    assert kinds.count("cancel_requested") == 4 and kinds.count("cancel_succeeded") == 1
    assert cancels(h, "b") == 1  # the three faults never reached the simulator's handler
    assert "cancel_abandoned" not in kinds
    row = await h.row("b")
    assert row["cancel_outcome"] == "succeeded" and row["cancel_attempts"] == 1


@SQLITE_ONLY
async def test_a_long_retry_after_is_honoured_not_used_up(harness: Harness) -> None:
    """429 with Retry-After: 600 (more than a tick waits): the cancel is not sent again
    before the provider's time, then is, and takes."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b")
    h.sim.simulator.faults.append(
        Fault("POST", "/batches/b/cancel", 429, headers={"Retry-After": "600"}, times=1)
    )
    await h.track("b")
    await h.tick()
    row = await h.row("b")
    assert (row["next_poll_at"] - h.clock.now()).total_seconds() == 600
    assert row["cancel_attempts"] == 0 and row["cancel_outcome"] == "failed"
    await h.tick(advance=300)
    assert (await h.kinds("b")).count("cancel_requested") == 1  # not before its time
    await h.tick(advance=300)
    assert (await h.kinds("b")).count("cancel_requested") == 2
    assert (await h.row("b"))["cancel_outcome"] == "succeeded" and cancels(h, "b") == 1


@SQLITE_ONLY
async def test_a_cancel_that_does_not_take_is_abandoned_loudly(harness: Harness) -> None:
    """A 200 whose batch stays in_progress is no success; after three such answers the
    cancel is given up with a warning event and a metric, and never sent again."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b")
    running = h.sim.simulator.batches["b"].wire(h.clock.time())
    h.sim.simulator.faults.append(
        Fault("POST", "/batches/b/cancel", 200, body=json.dumps(running), times=100)
    )
    await h.track("b")
    for _ in range(6):
        await h.tick(advance=60)
    kinds = await h.kinds("b")
    assert kinds.count("cancel_requested") == MAX_CANCEL_ATTEMPTS
    assert "cancel_succeeded" not in kinds and kinds.count("cancel_abandoned") == 1
    assert (await h.row("b"))["cancel_outcome"] == "abandoned"
    assert h.engine is not None
    counted = h.engine.metrics.cancels_abandoned.labels("sim", "cost-cap")._value.get()
    assert counted == 1


@SQLITE_ONLY
@pytest.mark.parametrize("status", [400, 409])
async def test_a_refused_cancel_is_never_sent_again(harness: Harness, status: int) -> None:
    """400/409 mean finished: one request, however many ticks; a batch still running
    after it is reported (cancel_abandoned), not cancelled again."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b")
    h.sim.simulator.faults.append(Fault("POST", "/batches/b/cancel", status, times=100))
    await h.track("b")
    for _ in range(5):
        await h.tick(advance=60)
    kinds = await h.kinds("b")
    assert kinds.count("cancel_abandoned") == 1 and kinds.count("cancel_requested") == 1


async def test_a_crash_before_the_request_costs_no_attempt(harness: Harness) -> None:
    """Three crashes between `cancel_requested` and the request leave the attempts
    untouched; the next run sends the cancel and it takes."""
    h = harness
    h.configure(policies=cost_cap())
    assert h.engine is not None
    expensive(h, "b")
    await h.track("b")
    send = h.engine._act

    async def crash(*args: Any) -> None:
        raise RuntimeError("killed")

    h.engine._act = crash  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await h.tick(advance=60)
    assert (await h.row("b"))["cancel_attempts"] == 0 and cancels(h, "b") == 0
    h.engine._act = send  # type: ignore[method-assign]
    await h.tick(advance=60)
    assert cancels(h, "b") == 1
    assert (await h.row("b"))["cancel_outcome"] == "succeeded"


def second_engine(h: Harness, owner: str) -> Engine:
    assert h.engine is not None
    return Engine(
        store=h.store,
        clients=h.engine.clients,
        rules=h.engine.rules,
        cadence=h.engine.cadence,
        owner=owner,
        clock=h.clock.now,
    )


async def test_a_cancel_in_flight_stays_its_senders(harness: Harness) -> None:
    """While one replica's cancel is in flight, another replica starting up (its
    reconciliation) and ticking never takes the batch: one cancel reaches the provider."""
    h = harness
    h.configure(policies=cost_cap())
    assert h.engine is not None
    expensive(h, "b")
    await h.track("b")
    h.sim.simulator.cancel_wait = 1.0
    sending = asyncio.create_task(h.engine.tick())
    async with asyncio.timeout(60):
        while "cancel_requested" not in await h.kinds("b"):
            await asyncio.sleep(0.02)
    other = second_engine(h, "replica-b")
    await h.store.claims.due_unsettled_cancels(h.clock.now())  # replica B starts
    await other.tick()
    h.clock.advance(60)
    await other.tick()
    await sending
    assert cancels(h, "b") == 1
    assert (await h.row("b"))["lease_owner"] is None  # given back with the outcome


async def test_the_hourly_limit_is_shared_by_replicas(harness: Harness) -> None:
    """Two replicas with max_cancels_per_hour 10 and 20 violators between them: 10
    cancels in all, and the safety trips."""
    h = harness
    h.configure(
        policies=cost_cap(), safety={"max_cancels_per_tick": 100, "max_cancels_per_hour": 10}
    )
    assert h.engine is not None
    ids = [f"b{i:02d}" for i in range(20)]
    for batch_id in ids:
        expensive(h, batch_id)
    await h.track(*ids)
    h.engine.chunk = 10
    other = second_engine(h, "replica-b")
    other.chunk = 10
    await asyncio.gather(h.engine.tick(), other.tick())
    assert cancels(h, *ids) == 10
    tripped = [e for e in await h.store.journal.list_events() if e["kind"] == "safety_tripped"]
    assert len(tripped) >= 1


@pytest.mark.parametrize(("offset", "cancelled"), [(0, 1), (-46_800, 0), (-120, 1)])
async def test_a_local_clock_stepped_forward_cancels_nothing(
    harness: Harness, offset: float, cancelled: int
) -> None:
    """The host clock stepped 13 hours forward (the provider's Date header that far
    behind): `age_above: 12h` would hold for every batch, so nothing is cancelled, and
    why is recorded (`clock_skew`, once) and logged. Two minutes off is within the
    default skew."""
    from structlog.testing import capture_logs

    h = harness
    h.configure(policies=[{"name": "old", "when": {"age_above": "12h"}, "action": "cancel"}])
    expensive(h, "b")
    h.sim.simulator.date_offset = offset
    await h.track("b")
    await h.tick()
    h.clock.advance(46_800)  # the stepped clock: now everything looks 13 hours older
    with capture_logs() as logs:
        await h.tick()
        await h.tick(advance=60)
    assert cancels(h, "b") == cancelled
    skew = [e for e in await h.store.journal.list_events() if e["kind"] == "clock_skew"]
    assert len(skew) == (1 - cancelled)
    if not cancelled:
        held = [e for e in logs if e["event"] == "cancel_held"]
        # The Date header has whole seconds: 46,800 or 46,801 seconds off.
        assert held and re.match(r"local clock is \+4680[01]s off sim's", held[0]["reason"])
