"""Record, then tell: an event is logged, counted and sent to webhooks only once it is
in the database. A replica that lost its lease, or a commit that fails, leaves no log
line and no webhook for what was dropped — the audit table and the log agree."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from tests.conftest import SQLITE_ONLY, Harness
from tests.test_engine import COST_CAP, progressed
from watchdog.core.events import Event

TOLD = {"status_changed", "policy_matched", "cancel_requested", "cancel_succeeded"}


async def over_the_cap(h: Harness) -> list[Event]:
    """Batch "b", tracked, over the cost cap; the list the webhooks would be handed."""
    h.configure(policies=COST_CAP)
    assert h.engine is not None
    sent: list[Event] = []
    h.engine.listen(sent.extend)
    progressed(h, "b", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track("b")
    return sent


@SQLITE_ONLY
async def test_a_lost_lease_is_neither_logged_nor_sent(harness: Harness) -> None:
    """Another replica takes the batch over while this one waits for the provider: this
    one's policy_matched and cancel_requested are dropped, and nothing says they were."""
    h = harness
    sent = await over_the_cap(h)
    assert h.engine is not None
    fetch = h.engine.refresher.fetch_all

    async def slow_fetch(*args: Any) -> Any:
        answers = await fetch(*args)
        # The lease runs out meanwhile and a second replica claims the batch.
        later = h.clock.now() + h.engine.lease * 2
        assert len(await h.store.claims.claim_due(later, "other", h.engine.lease, 10)) == 1
        return answers

    h.engine.refresher.fetch_all = slow_fetch  # type: ignore[method-assign]
    with capture_logs() as logs:
        summary = await h.tick()
    told = [entry["event"] for entry in logs]
    assert "lease_lost" in told and not TOLD & set(told), told
    assert sent == [] and h.sim.calls("b", "cancel") == 0
    assert summary.policy_matched == 0 and summary.cancel_requested == 0
    assert await h.kinds("b") == ["tracked"]


@SQLITE_ONLY
async def test_a_failed_commit_is_neither_logged_nor_sent(harness: Harness) -> None:
    """The database refuses the tick's write (here: a trigger, as a full disk would):
    the tick fails, no cancel goes out, and no event of it is logged or sent. Once the
    database takes writes again, the next tick records, logs and sends them once."""
    h = harness
    sent = await over_the_cap(h)
    refuse = (
        "CREATE TRIGGER refuse BEFORE INSERT ON batch_events "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    async with h.store.engine.begin() as conn:
        await conn.execute(text(refuse))
    with capture_logs() as logs, pytest.raises(Exception, match="disk full"):
        await h.tick()
    assert not TOLD & {entry["event"] for entry in logs}
    assert sent == [] and h.sim.calls("b", "cancel") == 0
    async with h.store.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER refuse"))
    with capture_logs() as logs:
        await h.tick(advance=1)
    told = [entry["event"] for entry in logs if entry["event"] in TOLD]
    kinds = [k for k in await h.kinds("b") if k in TOLD]
    assert told == kinds == [e.kind for e in sent if e.kind in TOLD]
    assert "cancel_succeeded" in kinds and h.sim.calls("b", "cancel") == 1


CONTRACT_KINDS = {  # DESIGN.md: tables and event kinds, and what later issues added
    "tracked",
    "untracked",
    "status_changed",
    "counts_changed",
    "policy_matched",
    "cancel_requested",
    "cancel_succeeded",
    "cancel_failed",
    "poll_failed",
    "pricing_missing",
    "cancel_abandoned",
    "backlog",
}


def test_event_kinds_are_one_list() -> None:
    """Every contract kind is in the one enum, and the schema's list is that enum."""
    from watchdog.core.events import Kind
    from watchdog.storage.tables import EVENT_KINDS

    assert {str(k) for k in Kind} >= CONTRACT_KINDS
    assert {str(k) for k in Kind} == EVENT_KINDS
