"""Discovery: the daemon reads a provider's batch list itself and starts tracking what it
has not seen, on the same list pass that refreshes the running ones; real ticks against
the simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from tests.conftest import API_KEY, LLAMA, SPENDER, Clock, Harness, Sim, table_rows
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)
from watchdog.providers.client import ProviderClient
from watchdog.sim.simulator import SimBatch, Simulator
from watchdog.storage.store import Store

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
    rows = await table_rows(h.store)
    via = {}
    for row in rows:
        events = await h.store.journal.list_events(row["batch_id"])
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
    assert await h.store.tracking.untrack("batch_ok_00", "sim", h.clock.now()) == ["sim"]
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


class Quirky(Simulator):
    """A provider whose list misbehaves: ``cycle`` — the third page's cursor leads back
    to the first page, ``has_more`` for ever; ``repeat`` — every cursor gets the first
    page again. ``malformed`` batches answer with an in_progress_at in milliseconds."""

    quirk = "cycle"
    malformed: frozenset[str] = frozenset()

    def _served(self, batch: SimBatch, now: float) -> dict[str, Any]:
        served = super()._served(batch, now)
        if batch.id in self.malformed:
            served["in_progress_at"] = int(now * 1000)
        return served

    async def _list(self, request: web.Request) -> web.Response:
        self.calls["(list)"]["list"] += 1
        ordered = sorted(self.batches.values(), key=lambda b: (-b.created_at, b.id))
        pages = [ordered[i : i + 100] for i in range(0, len(ordered), 100)]
        after = request.query.get("after")
        ends = [page[-1].id for page in pages]
        index = 0 if self.quirk == "repeat" or after not in ends else ends.index(after) + 1
        page = pages[index % len(pages)]
        cursor = page[-1].id if index < len(pages) - 1 else "batch_back_to_the_start"
        data = [self._served(b, self.clock()) for b in page]
        return web.json_response(
            {"object": "list", "data": data, "last_id": cursor, "has_more": True}
        )


@pytest.fixture
async def quirky(
    clock: Clock, store: Store, aiohttp_server: Any
) -> AsyncIterator[tuple[Harness, Quirky]]:
    simulator = Quirky(clock=clock.time, api_key=API_KEY)
    server = await aiohttp_server(simulator.app())
    sim = Sim(simulator, str(server.make_url("/v1")))
    client = ProviderClient("sim", base_url=sim.url, api_key=SecretStr(API_KEY), timeout=5)
    async with client:
        yield Harness(sim, store, clock, client), simulator


@pytest.mark.parametrize(
    ("quirk", "requests", "reason"),
    [("cycle", 4, "cursor_cycles"), ("repeat", 2, "page_repeated")],
)
async def test_a_list_that_cycles_or_repeats_stops_the_pass_and_says_so(
    quirky: tuple[Harness, Quirky], quirk: str, requests: int, reason: str
) -> None:
    """A cursor met again in one pass, or a page the same as the last: the pass stops
    there (not after 2,000 requests, nor quietly after two pages) and records
    ``discovery_incomplete`` with why, counted in the metrics."""
    h, simulator = quirky
    simulator.quirk = quirk
    h.configure(policies=COST_CAP, discover=True)
    for i in range(300):
        simulator.add(f"batch_{i:03d}", model=LLAMA, total=10**6, rate=0.01, age=i)
    await h.tick()
    assert h.sim.calls("(list)", "list") == requests
    (event,) = [
        e for e in await h.store.journal.list_events() if e["kind"] == "discovery_incomplete"
    ]
    assert event["provider"] == "sim" and event["detail"]["reason"] == reason
    assert event["detail"]["pages"] == requests
    assert len(await table_rows(h.store)) == (300 if quirk == "cycle" else 100)
    assert h.engine is not None
    metrics = h.engine.metrics.render().decode()
    assert f'watchdog_discovery_incomplete_total{{provider="sim",reason="{reason}"}} 1.0' in metrics


async def test_a_malformed_listed_batch_is_tracked_and_fails_its_polls_visibly(
    quirky: tuple[Harness, Quirky],
) -> None:
    """A listed batch the wire bounds refuse (an in_progress_at in milliseconds) is not
    skipped: discovery tracks it, and its polls fail with ``poll_failed`` naming the
    field, like any tracked batch's."""
    h, simulator = quirky
    simulator.quirk = "repeat"  # one page: the whole list
    simulator.malformed = frozenset({"batch_odd"})
    h.configure(policies=COST_CAP, discover=True)
    simulator.add("batch_fine", model=LLAMA, total=10**6, rate=0.01)
    simulator.add("batch_odd", model=LLAMA, total=10**6, rate=0.01)
    await h.tick()
    assert set(await tracked_via(h)) == {"batch_fine", "batch_odd"}
    kinds = await h.kinds("batch_odd")
    assert kinds[:2] == ["tracked", "poll_failed"]
    (failed,) = [
        e for e in await h.store.journal.list_events("batch_odd") if e["kind"] == "poll_failed"
    ]
    assert "in_progress_at" in failed["detail"]["error"]


NOW_TS = 1_800_000_000.0
HOUR = 3600.0


@pytest.mark.parametrize(
    ("new_from", "running", "density", "through", "why"),
    [
        (None, [NOW_TS - HOUR], 1.0, NOW_TS - 7 * DAY, "no complete pass yet: the look-back"),
        (NOW_TS - 60, [NOW_TS - 5 * HOUR], None, NOW_TS - 5 * HOUR, "no density: down to all"),
        (NOW_TS - 60, [NOW_TS - 30, NOW_TS - 40], 1.0, NOW_TS - 60, "running among the new"),
        # 1,000 running spread evenly over 20 h among 0.2 batches a second (14,400 listed):
        # 145 pages hold them all, which beats 1,000 GETs.
        (NOW_TS - 60, [NOW_TS - 72 * i for i in range(1000)], 0.2, NOW_TS - 72 * 999,
         "pages, down to the oldest"),
        # 999 running in the last hour and one 20 h old: the pages of the last hour, and
        # one GET for the old one instead of 140 pages down to it.
        (NOW_TS - 60, [NOW_TS - 3.6 * i for i in range(999)] + [NOW_TS - 20 * HOUR], 0.2,
         NOW_TS - 3.6 * 998, "the recent pages, a GET for the straggler"),
        # 300 running, all about 10 h old, in a dense stretch: 37 pages beat 300 GETs.
        (NOW_TS - 60, [NOW_TS - 10 * HOUR - i for i in range(300)], 0.1, NOW_TS - 10 * HOUR - 299,
         "pages, down to the cluster"),
    ],
)  # fmt: skip
def test_a_pass_reads_down_only_as_far_as_pages_pay(
    new_from: float | None, running: list[float], density: float | None, through: float,
    why: str,
) -> None:  # fmt: skip
    from watchdog.daemon.refresh import depth

    floor = NOW_TS - 7 * DAY
    assert depth(floor, new_from, running, density, NOW_TS) == through, why
