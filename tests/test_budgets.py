"""Pooled budgets: windows, spend, committed and the batches chosen, pure and from
tables; then through real ticks against the simulator on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import LLAMA, Harness
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)
from watchdog.core.budgets import Budget, Spending, assess
from watchdog.core.cadence import Cadence
from watchdog.core.models import BatchView, Counts
from watchdog.daemon.budgeting import assess_budgets
from watchdog.daemon.engine import Engine
from watchdog.sim.simulator import Fault
from watchdog.storage.journal import EventFilter

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
RESEARCH = {"provider": "sim", "metadata": {"team": "research"}}


def budget(**fields: Any) -> Budget:
    spec: dict[str, Any] = {"name": "research-daily", "limit_usd": 200, "action": "cancel"}
    return Budget.model_validate(spec | fields)


def batch(
    batch_id: str,
    *,
    team: str = "research",
    status: str = "in_progress",
    cost: str | None = "20",
    done: int = 100,
    age_h: float = 1,
    **fields: Any,
) -> Spending:
    view = BatchView(
        provider="sim",
        batch_id=batch_id,
        status=status,
        metadata={"team": team},
        created_at=NOW - timedelta(hours=age_h),
        counts=Counts(total=300, completed=done, failed=0),
    )
    return Spending(view, None if cost is None else Decimal(cost), **fields)


def research_day() -> list[Spending]:
    """Six running research batches at $20, each projected $60 at completion (100 of
    300 done), the newest first in id order; two completed today for $30; and ops."""
    running = [batch(f"batch_r{i}", age_h=i + 1) for i in range(6)]  # r0 is the newest
    done = [batch(f"batch_done{i}", status="completed", cost="15", done=300) for i in range(2)]
    ops = [batch(f"batch_ops{i}", team="ops", age_h=0.5) for i in range(3)]
    return running + done + ops


def test_the_newest_batches_needed_to_fit_are_chosen() -> None:
    """Spend $150, committed $390 against $200: the five newest go ($40 of projection
    each takes it to $190), none of ops, not the oldest."""
    (one,) = assess([budget(match=RESEARCH)], research_day(), NOW)
    assert (one.spend, one.committed, one.limit) == (Decimal(150), Decimal(390), Decimal(200))
    chosen = [c.view.batch_id for c in one.chosen]
    assert chosen == ["batch_r0", "batch_r1", "batch_r2", "batch_r3", "batch_r4"]


def test_once_cancelled_nothing_more_is_chosen() -> None:
    """The next tick: the five are cancelling (nothing more to come): committed $190."""
    batches = [
        batch(b.view.batch_id, age_h=i + 1, stopping=True) if i < 5 else b
        for i, b in enumerate(research_day())
    ]
    (one,) = assess([budget(match=RESEARCH)], batches, NOW)
    assert one.committed == Decimal(190) and one.chosen == [] and not one.over


def test_a_cancel_stops_spending_only_once_it_took() -> None:
    """A cancel that failed (503, or a 200 leaving the batch running) stops nothing: the
    batch still counts and is chosen again; one refused or given up keeps counting but
    is never chosen again, so the next newest is."""
    failed = [
        batch(b.view.batch_id, age_h=i + 1, backing_off=True) if i < 5 else b
        for i, b in enumerate(research_day())
    ]
    (one,) = assess([budget(match=RESEARCH)], failed, NOW)
    assert one.committed == Decimal(390) and len(one.chosen) == 5
    spent = [
        batch(b.view.batch_id, age_h=i + 1, spent_cancel=True) if i == 0 else b
        for i, b in enumerate(research_day())
    ]
    (one,) = assess([budget(match=RESEARCH)], spent, NOW)
    chosen = [c.view.batch_id for c in one.chosen]
    assert one.committed == Decimal(390) and chosen == [f"batch_r{i}" for i in range(1, 6)]


def test_groups_are_budgets_of_their_own() -> None:
    """group_by metadata.team: research is over, ops ($60 spent, $120 to come) is not."""
    found = {a.key: a for a in assess([budget(group_by=["metadata.team"])], research_day(), NOW)}
    assert set(found) == {"research-daily/research", "research-daily/ops"}
    assert len(found["research-daily/research"].chosen) == 5
    ops = found["research-daily/ops"]
    assert ops.committed == Decimal(180) and ops.chosen == []


def test_largest_remaining_first_and_exemptions() -> None:
    """largest_remaining_first takes the batch with most to come; an exempt one and one
    of unknown projection are never chosen; an alert budget chooses nothing."""
    batches = [
        batch("batch_small", cost="10", done=150),  # $10 to come
        batch("batch_big", cost="20", done=50),  # $100 to come
        batch("batch_vip", cost="20", done=30, exempt=True),  # $180 to come
        batch("batch_new", cost="0", done=0),  # unknown projection
    ]
    spec = {"limit_usd": 250, "order": "largest_remaining_first"}  # committed $340
    (one,) = assess([budget(**spec)], batches, NOW)
    assert [c.view.batch_id for c in one.chosen] == ["batch_big"]
    assert one.unknown_remaining == 1
    (alert,) = assess([budget(**spec, action="alert")], batches, NOW)
    assert alert.over and alert.chosen == []


def test_unknown_cost_is_reported_never_zero() -> None:
    (one,) = assess([budget()], [batch("a", cost=None), batch("b", cost="5")], NOW)
    assert one.unknown_cost == 1 and one.spend == Decimal(5) and one.unknown_remaining == 1


@pytest.mark.parametrize(
    ("window", "timezone", "start"),
    [
        ("1d", "UTC", datetime(2026, 11, 27, 15, 0, tzinfo=UTC)),
        ("12h", "UTC", datetime(2026, 11, 28, 3, 0, tzinfo=UTC)),
        ("day", "UTC", datetime(2026, 11, 28, 0, 0, tzinfo=UTC)),
        ("day", "America/New_York", datetime(2026, 11, 28, 5, 0, tzinfo=UTC)),
        ("week", "UTC", datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),  # a Monday
        ("month", "Europe/Berlin", datetime(2026, 10, 31, 23, 0, tzinfo=UTC)),
    ],
)
def test_windows(window: str, timezone: str, start: datetime) -> None:
    assert budget(window=window, timezone=timezone).start(NOW) == start


def test_the_window_holds_what_was_created_in_it_or_still_runs() -> None:
    """A finished batch from before the window is out; one still running is in."""
    batches = [
        batch("old_done", status="completed", cost="50", age_h=30, done=300),
        batch("old_running", cost="20", age_h=30),
        batch("new_done", status="completed", cost="7", age_h=2, done=300),
    ]
    (one,) = assess([budget(window="day")], batches, NOW)
    assert {m.view.batch_id for m in one.members} == {"old_running", "new_done"}
    assert one.spend == Decimal(27)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("group_by", ["metadata"], "unknown path 'metadata'; valid: provider, model"),
        ("limit_usd", -5, "greater than 0"),
        ("window", "fortnight", "invalid duration 'fortnight'"),
        ("window", "0s", "must be longer than 0"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("warn_at", [1.5], "between 0 and 1"),
        ("order", "oldest_first", "newest_first"),
    ],
)
def test_bad_budgets_say_what_is_wrong(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        budget(**{field: value})


def test_thresholds_crossed() -> None:
    (one,) = assess([budget(limit_usd=500, warn_at=[0.8, 0.5])], research_day(), NOW)
    assert one.committed == Decimal(570) and one.crossed() == [0.5, 0.8]


# Through real ticks: the simulator, the engine, SQLite and PostgreSQL.

DOLLAR_FIFTH = {"input_tokens": 5_000_000, "output_tokens": 1_000_000}  # $0.20 a request
RESEARCH_DAILY = {
    "name": "research-daily",
    "match": {"provider": "sim", "metadata": {"team": "research"}},
    "limit_usd": 200,
    "window": "1d",
    "warn_at": [0.5, 0.8],
    "action": "cancel",
    "order": "newest_first",
}
RUNNING = [f"batch_r{i}" for i in range(6)]  # batch_r0 is the newest


def spending_day(h: Harness, ops: int = 3) -> None:
    """Six running research batches at $20 (100 of 300 requests), projected $60; two
    research batches completed today for $15 each; ``ops`` running ops batches alike."""
    sim = h.sim.simulator
    for i, batch_id in enumerate(RUNNING):
        # Created i seconds apart, each validating that long: all 100 requests in.
        sim.add(batch_id, age=100 + i, validating_for=i, total=300, rate=1, model=LLAMA,
                metadata={"team": "research"}, **DOLLAR_FIFTH)  # fmt: skip
    for i in range(2):
        sim.add(f"batch_done{i}", age=20, total=75, rate=10, model=LLAMA,
                metadata={"team": "research"}, **DOLLAR_FIFTH)  # fmt: skip
    for i in range(ops):
        sim.add(f"batch_ops{i}", age=100, total=300, rate=1, model=LLAMA,
                metadata={"team": "ops"}, **DOLLAR_FIFTH)  # fmt: skip


async def daemon_events(h: Harness, kind: str) -> list[dict[str, Any]]:
    wanted = EventFilter(kinds=(kind,))
    return [e async for e in h.store.journal.stream_events(wanted)]


def cancelled(h: Harness) -> dict[str, int]:
    return {b: n for b in h.sim.simulator.batches if (n := h.sim.calls(b, "cancel"))}


async def test_a_budget_cancels_the_newest_batches_needed_once(harness: Harness) -> None:
    """$390 committed against $200: the five newest research batches are cancelled,
    once; none of ops; budget_exceeded recorded once, with the thresholds."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY])
    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    assert cancelled(h) == {b: 1 for b in RUNNING[:5]}
    (exceeded,) = await daemon_events(h, "budget_exceeded")
    detail = exceeded["detail"]
    assert (detail["spend_usd"], detail["committed_usd"], detail["limit_usd"]) == (150, 390, 200)
    assert [c["batch_id"] for c in detail["chosen"]] == RUNNING[:5]
    assert [e["detail"]["fraction"] for e in await daemon_events(h, "budget_threshold")] == [
        0.5,
        0.8,
    ]
    for _ in range(2):
        await h.tick(advance=60)
    assert cancelled(h) == {b: 1 for b in RUNNING[:5]}
    assert len(await daemon_events(h, "budget_exceeded")) == 1
    assert len(await daemon_events(h, "budget_threshold")) == 2
    canceller = (await h.row("batch_r0"))["cancel_policy"]
    assert canceller == "research-daily"


async def test_a_failed_budget_cancel_is_sent_again_after_its_backoff(harness: Harness) -> None:
    """The newest batch's cancel answers 503: it still counts as running (the budget
    stays over), and its cancel is sent again once its backoff is over — not before."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY])
    spending_day(h)
    h.sim.simulator.faults.append(Fault("POST", "/batches/batch_r0/cancel", 503))
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    assert cancelled(h) == {b: 1 for b in RUNNING[1:5]}
    assert (await h.row("batch_r0"))["cancel_outcome"] == "failed"
    assert h.engine is not None
    (one,) = await assess_budgets(h.store, h.engine.rules, h.clock.now())
    assert one.over and [m.view.batch_id for m in one.chosen] == ["batch_r0"]
    await h.tick(advance=5)  # within the 15 s backoff: not yet
    assert h.sim.calls("batch_r0", "cancel") == 0
    # Due again 15 s after the failure; $35.80 of its projection is still to come, which
    # is enough to fit (committed $230 against $200): batch_r0 alone.
    await h.tick(advance=16)
    assert cancelled(h) == {b: 1 for b in RUNNING[:5]}
    assert (await h.row("batch_r0"))["cancel_outcome"] == "succeeded"
    (one,) = await assess_budgets(h.store, h.engine.rules, h.clock.now())
    assert not one.over


async def test_an_abandoned_budget_cancel_chooses_the_next_batch(harness: Harness) -> None:
    """The newest batch's cancel answers 200 three times and the batch runs on: the
    cancel is abandoned, and the budget chooses the next newest batch instead."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY])
    spending_day(h)
    still = json.dumps(h.sim.simulator.batches["batch_r0"].wire(h.clock.time()))
    h.sim.simulator.faults.append(
        Fault("POST", "/batches/batch_r0/cancel", 200, body=still, times=3)
    )
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    for _ in range(3):  # each try 15 s after the last
        await h.tick(advance=16)
    assert (await h.row("batch_r0"))["cancel_outcome"] == "abandoned"
    assert cancelled(h) == {b: 1 for b in RUNNING[1:6]}
    chosen = [
        [c["batch_id"] for c in e["detail"]["chosen"]]
        for e in await daemon_events(h, "budget_exceeded")
    ]
    assert chosen[0] == RUNNING[:5] and chosen[-1] == ["batch_r5"]


async def test_each_group_is_a_budget_of_its_own(harness: Harness) -> None:
    """group_by metadata.team: research ($390) loses batches, ops ($120) does not."""
    h = harness
    per_team = RESEARCH_DAILY | {"match": {"provider": "sim"}, "group_by": ["metadata.team"]}
    h.configure(policies=[], budgets=[per_team])
    spending_day(h, ops=2)
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    assert cancelled(h) == {b: 1 for b in RUNNING[:5]}
    (exceeded,) = await daemon_events(h, "budget_exceeded")
    assert exceeded["detail"]["group"] == {"metadata.team": "research"}


async def test_dry_run_records_the_same_decisions_and_cancels_nothing(harness: Harness) -> None:
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY], dry_run=True)
    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    summary = await h.tick()
    assert cancelled(h) == {} and summary.cancel_held == 5
    (exceeded,) = await daemon_events(h, "budget_exceeded")
    assert [c["batch_id"] for c in exceeded["detail"]["chosen"]] == RUNNING[:5]
    assert await daemon_events(h, "cancel_requested") == []
    await h.tick()  # the same batches chosen again: nothing new said
    assert len(await daemon_events(h, "budget_exceeded")) == 1


async def test_replicas_ticking_together_cancel_each_once(harness: Harness) -> None:
    """Three replicas on one database tick at once, on what a first poll recorded: one
    assesses the budget; the same five batches are cancelled, each once."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY])
    assert h.engine is not None and h.settings is not None

    def replica(owner: str, rules: Any) -> Engine:
        interval = h.settings.poll_interval if h.settings else timedelta(minutes=1)
        return Engine(
            store=h.store,
            clients={"sim": h.client},
            rules=rules,
            cadence=Cadence(interval),
            owner=owner,
            clock=h.clock.now,
        )

    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    await replica("first-poll", replace(h.engine.rules, budgets=())).tick()
    others = [replica(f"replica-{n}", h.engine.rules) for n in range(2)]
    for _ in range(3):
        await asyncio.gather(h.tick(), *(e.tick() for e in others))
        h.clock.advance(60)
    assert cancelled(h) == {b: 1 for b in RUNNING[:5]}
    assert len(await daemon_events(h, "budget_exceeded")) == 1


async def test_budget_gauges_follow_the_assessment(harness: Harness) -> None:
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY | {"action": "alert"}])
    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    assert h.engine is not None
    metrics = h.engine.metrics.render().decode()
    labels = '{budget="research-daily",group="all"}'
    assert f"watchdog_budget_spend_usd{labels} 150.0" in metrics
    assert f"watchdog_budget_committed_usd{labels} 390.0" in metrics
    assert f"watchdog_budget_limit_usd{labels} 200.0" in metrics


BUDGET_YAML = """budgets:
  - name: research-daily
    match: {metadata: {team: research}}
    limit_usd: 200
    window: day
    warn_at: [0.5]
    action: alert
"""


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("{name: b1, limit_usd: -5}", "budget 'b1': limit_usd: Input should be greater than 0"),
        ("{name: b2, limit_usd: 5, group_by: [team]}", "budget 'b2': group_by: unknown path"),
        ("{name: b3, limit_usd: 5, window: 2w}", "budget 'b3': window: invalid duration '2w'"),
        ("{name: cost-cap, limit_usd: 5}", "name 'cost-cap' is taken by a policy or budget"),
        ("{name: b4, limit_usd: 1e22}", "budget 'b4': limit_usd: Input should be less than or"),
    ],
)
async def test_a_bad_budget_exits_78_naming_it(cli: Cli, entry: str, says: str) -> None:  # noqa: F811
    cli.write_config(f"budgets:\n  - {entry}\n")
    result = await cli("run", "--once")
    assert result.code == 78 and result.err.count("\n") == 1
    assert says in result.err


async def test_the_budgets_command(cli: Cli, clock: Any) -> None:  # noqa: F811
    """`budgets` shows each budget's spend, committed and limit from the database, as
    JSON and as a table; it changes nothing."""
    import time

    clock.t = time.time()  # the daemon reads the real clock: the window too
    sim = cli.sim.simulator
    # Exempt (watchdog=off), so that the config's cost cap leaves them running.
    meta = {"team": "research", "watchdog": "off"}
    for i in range(6):
        sim.add(f"batch_r{i}", age=100 + i, validating_for=i, total=300, rate=1, model=LLAMA,
                metadata=meta, **DOLLAR_FIFTH)  # fmt: skip
        assert (await cli("track", f"batch_r{i}", "--provider", "sim")).code == 0
    cli.write_config(BUDGET_YAML)
    before = json.loads((await cli("budgets", "--json")).out)
    # Not polled yet: nothing known of them (their metadata neither) counts.
    assert [(b["spend_usd"], b["state"], b["batches"]) for b in before] == [(0, "ok", 0)]
    assert (await cli("run", "--once")).code == 0
    (after,) = json.loads((await cli("budgets", "--json")).out)
    assert (after["spend_usd"], after["committed_usd"], after["state"]) == (120, 360, "over")
    assert after["to_cancel"] == [] and after["action"] == "alert"
    table = (await cli("budgets")).out
    assert "research-daily" in table and "$360.00" in table and "over" in table
    assert sum(sim.calls[f"batch_r{i}"]["cancel"] for i in range(6)) == 0


def test_the_ledger_keeps_the_same_figures_as_counting_one_by_one() -> None:
    """The daemon's ledger of finished batches (added as they end, removed when
    untracked, aged out as the windows move) gives every budget group exactly the
    figures of counting each batch afresh, hour after hour: rolling, calendar and
    grouped windows alike."""
    import random

    from watchdog.core.ledger import Finished, Ledger

    rng = random.Random(7)
    budgets = [
        budget(name="rolling", window="6h", match={}),
        budget(name="daily", window="day", group_by=["metadata.team"]),
        budget(name="weekly", window="week", match=RESEARCH, group_by=["model"]),
    ]
    start = NOW - timedelta(days=2)
    ended: dict[str, Spending] = {}
    running = [batch(f"run_{i}", age_h=rng.uniform(0, 40)) for i in range(5)]
    ledger = Ledger(budgets, start)
    for hour in range(60):
        now = start + timedelta(hours=hour)
        for n in range(rng.randrange(4)):  # batches end
            item = batch(f"done_{hour}_{n}", status="completed", team=rng.choice(["a", "b"]),
                         cost=rng.choice([None, "1.5", "2.25"]), age_h=0)  # fmt: skip
            view = replace(item.view, created_at=now - timedelta(hours=rng.uniform(0, 30)),
                           model=rng.choice(["m1", "m2"]))  # fmt: skip
            item = replace(item, view=view)
            ended[view.batch_id] = item
            ledger.add(Finished(view, item.cost))
        if ended and rng.random() < 0.2:  # one untracked
            gone = rng.choice(sorted(ended))
            del ended[gone]
            ledger.remove(("sim", gone))
        assert ledger.advance(now)
        direct = assess(budgets, [*ended.values(), *running], now)
        kept = assess(budgets, running, now, ledger)
        figures = lambda found: sorted(  # noqa: E731
            (a.key, a.spend, a.committed, a.unknown_cost, a.batches) for a in found
        )
        assert figures(kept) == figures(direct), hour


async def test_the_daemons_book_agrees_with_a_fresh_look(harness: Harness) -> None:
    """Through real ticks: batches end, one is untracked, the window moves; the daemon's
    book (kept from what changed) shows exactly what a fresh read of the database does."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY | {"action": "alert"}])
    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    assert h.engine is not None
    for step in range(6):
        if step == 3:
            await h.store.tracking.untrack("batch_done0", "sim", h.clock.now())
        await h.tick(advance=120)
        kept = h.engine.budgeting.book.last
        fresh = await assess_budgets(h.store, h.engine.rules, h.clock.now())
        assert [a.figures() for a in kept] == [a.figures() for a in fresh], step
    assert kept[0].finished > 0  # the ended batches came from the ledger


async def test_a_look_a_moment_behind_the_last_does_not_rebuild_the_book(
    harness: Harness,
) -> None:
    """The tick and the status page read the clock at their own moments: a look a few
    seconds behind the last is the same look (the book is not built again, which at a
    hundred thousand batches costs seconds); a clock stepped back is a new build."""
    h = harness
    h.configure(policies=[], budgets=[RESEARCH_DAILY | {"action": "alert"}])
    spending_day(h)
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    assert h.engine is not None
    book, rules, now = h.engine.budgeting.book, h.engine.rules, h.clock.now()
    built = book._ledger
    await book.assess(h.store, rules, now - timedelta(seconds=3))
    assert book._ledger is built
    await book.assess(h.store, rules, now - timedelta(hours=2))
    assert book._ledger is not built
