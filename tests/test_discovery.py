"""Discovery: the daemon reads a provider's batch list itself and starts tracking what it
has not seen, on the same list pass that refreshes the running ones; real ticks against
the simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import LLAMA, SPENDER, Harness
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)

COST_CAP = [
    {
        "name": "cost-cap",
        "match": {"model": "meta-llama/*"},
        "when": {"cost_usd_above": 5},
        "action": "cancel",
    }
]
DAY = 86_400.0


def account(h: Harness, healthy: int = 11) -> None:
    """``healthy`` cheap running batches and one past the $5 cap ($9.90 at 30 s)."""
    for i in range(healthy):
        h.sim.simulator.add(f"batch_ok_{i:02d}", model=LLAMA, total=1000, rate=0.1)
    h.sim.simulator.add("batch_spender", **SPENDER)


async def tracked_via(h: Harness) -> dict[str, str | None]:
    """Every tracked batch, with how it came to be tracked."""
    rows = await h.store.list_batches()
    via = {}
    for row in rows:
        events = await h.store.list_events(row["batch_id"])
        first = next(e for e in events if e["kind"] == "tracked")
        via[row["batch_id"]] = (first["detail"] or {}).get("via")
    return via


async def test_one_tick_tracks_the_account_and_cancels_the_violator(harness: Harness) -> None:
    """Nothing tracked, twelve running: one tick tracks all twelve from one list page
    (no single GETs) and cancels the one over its cap."""
    h = harness
    h.configure(policies=COST_CAP, discover=True)
    account(h)
    summary = await h.tick()
    via = await tracked_via(h)
    assert len(via) == 12 and set(via.values()) == {"discovery"}
    assert summary.polled == 12 and summary.cancel_succeeded == 1
    assert h.sim.calls("batch_spender", "cancel") == 1
    assert h.sim.calls("(list)", "list") == 1
    assert sum(h.sim.calls(b, "get") for b in via) == 0


async def test_new_batches_are_found_and_an_untrack_sticks(harness: Harness) -> None:
    """A batch created between passes is tracked by the next one; one the operator
    untracked is not tracked again; before an interval has passed, no pass at all."""
    h = harness
    h.configure(policies=COST_CAP, discover=True)
    account(h, healthy=3)
    await h.tick()
    assert await h.store.untrack("batch_ok_00", "sim", h.clock.now()) == ["sim"]
    h.clock.advance(20)
    h.sim.simulator.add("batch_new", model=LLAMA, total=1000, rate=0.1)
    await h.tick()  # early: the last pass is 20 s old
    assert "batch_new" not in await tracked_via(h) and h.sim.calls("(list)", "list") == 1
    await h.tick(advance=40)
    via = await tracked_via(h)
    assert via.get("batch_new") == "discovery" and "batch_ok_00" not in via
    assert h.sim.calls("(list)", "list") == 2


async def test_look_back_match_and_finished_batches(harness: Harness) -> None:
    """Only batches created within the look-back that the selector matches; a finished
    one found there is recorded once and never polled again."""
    h = harness
    h.configure(
        policies=COST_CAP,
        discover={"match": {"metadata": {"team": "research"}}, "created_within": "2d"},
    )
    research = {"team": "research"}
    h.sim.simulator.add("batch_r_running", model=LLAMA, metadata=research, total=10**6)
    h.sim.simulator.add("batch_r_done", model=LLAMA, metadata=research, age=DAY, total=10)
    h.sim.simulator.add("batch_r_old", model=LLAMA, metadata=research, age=3 * DAY, total=10)
    h.sim.simulator.add("batch_ops", model=LLAMA, metadata={"team": "ops"}, total=10**6)
    await h.tick()
    assert set(await tracked_via(h)) == {"batch_r_running", "batch_r_done"}
    assert (await h.row("batch_r_done"))["status"] == "completed"
    for _ in range(3):
        await h.tick(advance=60)
    assert h.sim.calls("batch_r_done", "get") == 0
    assert (await h.row("batch_r_done"))["next_poll_at"] is None


async def test_an_exempt_batch_is_discovered_never_cancelled(harness: Harness) -> None:
    """metadata watchdog=off: tracked and shown like any other, never cancelled."""
    h = harness
    h.configure(policies=COST_CAP, discover=True)
    h.sim.simulator.add("batch_vip", metadata={"watchdog": "off"}, **SPENDER)
    await h.tick()
    assert (await tracked_via(h)) == {"batch_vip": "discovery"}
    assert h.sim.calls("batch_vip", "cancel") == 0


async def test_a_pass_costs_one_list_request_per_hundred_running(harness: Harness) -> None:
    """250 running batches, discovered: each later interval reads them from the list in
    ceil(250/100) + 1 requests at most, with no single GETs, and polls each once."""
    h = harness
    h.configure(policies=COST_CAP, discover=True)
    for i in range(250):
        h.sim.simulator.add(f"batch_{i:03d}", model=LLAMA, total=10**6, rate=0.01, age=i)
    first = await h.tick()
    assert first.polled == 250
    for n in range(2, 5):
        before = h.sim.calls("(list)", "list")
        summary = await h.tick(advance=60)
        assert summary.polled == 250, n
        assert h.sim.calls("(list)", "list") - before <= 4
    assert sum(h.sim.calls(f"batch_{i:03d}", "get") for i in range(250)) == 0


async def test_run_once_discovers_through_the_cli(cli: Cli, clock: Any) -> None:  # noqa: F811
    """``run --once`` with discovery on, nothing tracked: all twelve tracked, the one
    over its cap cancelled; at most two list pages and one cancel sent."""
    import time

    clock.t = time.time()  # the daemon reads the real clock: its look-back too
    sim = cli.sim.simulator
    for i in range(11):
        sim.add(f"batch_ok_{i:02d}", model=LLAMA, total=1000, rate=0.1)
    sim.add("batch_spender", **SPENDER)
    cli.write_config(provider="    discover: true\n")
    result = await cli("run", "--once")
    assert result.code == 0, result.err
    listed = json.loads((await cli("list", "--json")).out)
    assert len(listed) == 12
    requests = {kind: sum(c.get(kind, 0) for c in sim.calls.values()) for kind in ("list", "get")}
    assert requests == {"list": 1, "get": 0} and sim.calls["batch_spender"]["cancel"] == 1
    events = json.loads((await cli("events", "batch_ok_03", "--json")).out)
    assert events[0]["kind"] == "tracked" and events[0]["detail"] == {"via": "discovery"}
