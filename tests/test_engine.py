"""Whole ticks against the simulator over HTTP and a real SQLite file, time injected:
the acceptance cases of the core issue."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

from tests.conftest import SQLITE_ONLY, Harness, table_rows
from watchdog.core.cadence import Cadence
from watchdog.daemon.engine import Engine
from watchdog.sim.simulator import Fault

COST_CAP = [
    {
        "name": "cost-cap",
        "match": {"model": "meta-llama/*"},
        "when": {"cost_usd_above": 5},
        "action": "cancel",
    }
]
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def frozen(h: Harness, batch_id: str, **params: Any) -> None:
    """A batch whose counts no longer move (rate 0), with usage set per completed request."""
    defaults: dict[str, Any] = {"model": LLAMA, "total": 1000, "rate": 0.0}
    h.sim.simulator.add(batch_id, **(defaults | params))


def progressed(h: Harness, batch_id: str, done: int, total: int, **params: Any) -> None:
    """A batch created long enough ago to have ``done`` requests processed, now stalled."""
    batch = h.sim.simulator.add(
        batch_id, model=params.pop("model", LLAMA), total=total, rate=1.0, age=done, **params
    )
    batch.rate = done / (h.clock.time() - batch.run_start)


async def test_cost_cap_cancels_the_expensive_batch_only(harness: Harness) -> None:
    """$0.03/$0.05 per 1M: 50M in + 100M out ($6.50) is cancelled, $0.40 is not."""
    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    progressed(h, "batch_small", 1000, 2000, input_tokens=5_000, output_tokens=5_000)
    await h.track("batch_big", "batch_small")
    summary = await h.tick()
    assert summary.cancel_succeeded == 1
    assert h.sim.calls("batch_big", "cancel") == 1
    assert h.sim.calls("batch_small", "cancel") == 0
    big, small = await h.row("batch_big"), await h.row("batch_small")
    assert big["cost_usd"] == 6.5 and big["cancel_policy"] == "cost-cap"
    assert big["status"] == "cancelling"
    assert small["cost_usd"] == Decimal("0.4") and small["cancel_policy"] is None


async def test_cached_and_reasoning_tokens_cost_exactly(harness: Harness) -> None:
    """$0.50 in, $0.25 cached, $2.00 out: 4M in (3M cached), 1M out (0.8M reasoning) = $3.25."""
    h = harness
    h.configure(
        policies=COST_CAP,
        pricing=[{"model": "gpt-*", "input": 0.5, "cached_input": 0.25, "output": 2.0}],
    )
    progressed(
        h,
        "batch_gpt",
        1000,
        2000,
        model="gpt-5",
        input_tokens=4000,
        cached_tokens=3000,
        output_tokens=1000,
        reasoning_tokens=800,
    )
    await h.track("batch_gpt")
    await h.tick()
    assert (await h.row("batch_gpt"))["cost_usd"] == 3.25


@SQLITE_ONLY
async def test_expiring_slow_batch(harness: Harness) -> None:
    """expires_within 1h + progress_below 0.5: 40 min left at 30 % is cancelled, at 90 % not."""
    h = harness
    h.configure(
        policies=[
            {
                "name": "expiring-slow",
                "action": "cancel",
                "when": {"expires_within": "1h", "progress_below": 0.5},
            }
        ]
    )
    for name, done in (("batch_slow", 300), ("batch_nearly", 900)):
        batch = h.sim.simulator.add(name, model=LLAMA, total=1000, rate=0.0, age=86400 - 2400)
        batch.rate = done / (h.clock.time() - batch.run_start)
    await h.track("batch_slow", "batch_nearly")
    await h.tick()
    assert h.sim.calls("batch_slow", "cancel") == 1
    assert h.sim.calls("batch_nearly", "cancel") == 0


@SQLITE_ONLY
async def test_failure_ratio_with_min_requests(harness: Harness) -> None:
    """failure_ratio_above 0.2 + min_requests 50: 80/40 is cancelled, 4/4 is spared."""
    h = harness
    h.configure(
        policies=[
            {
                "name": "failing",
                "action": "cancel",
                "when": {"failure_ratio_above": 0.2, "min_requests": 50},
            }
        ]
    )
    progressed(h, "batch_bad", 120, 1000, failure_rate=1 / 3)
    progressed(h, "batch_few", 8, 1000, failure_rate=0.5)
    await h.track("batch_bad", "batch_few")
    await h.tick()
    bad = await h.row("batch_bad")
    assert (bad["request_completed"], bad["request_failed"]) == (80, 40)
    assert h.sim.calls("batch_bad", "cancel") == 1
    assert h.sim.calls("batch_few", "cancel") == 0


@SQLITE_ONLY
async def test_never_cancelled_and_never_break_a_tick(harness: Harness) -> None:
    """Completed, cancelling, unknown-status and bare batches are tracked, never cancelled."""
    h = harness
    anything = [
        {
            "name": "everything",
            "action": "cancel",
            "when": {
                "age_above": "0s",
                "status_in": [
                    "validating",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "cancelling",
                    "queued_for_gpu",
                ],
            },
        }
    ]
    h.configure(policies=anything, pricing=[])
    h.sim.simulator.add("batch_done", age=90_000, total=10, rate=10)
    h.sim.simulator.add("batch_cancelling", age=10, total=10, rate=0).cancel_at = h.clock.time()
    h.sim.simulator.add("batch_bare", age=10, model=None, with_usage=False, total=10, rate=0)
    await h.track("batch_done", "batch_cancelling", "batch_bare")
    summary = await h.tick()
    assert summary.polled == 3 and summary.poll_failed == 0
    # Only the bare batch (in progress) may be cancelled; the other two are held.
    assert h.sim.calls("batch_done", "cancel") == 0
    assert h.sim.calls("batch_cancelling", "cancel") == 0
    assert summary.cancel_held == 2
    bare = await h.row("batch_bare")
    assert bare["cost_usd"] is None and bare["model"] is None


@SQLITE_ONLY
async def test_unknown_status_is_recorded_once_and_never_cancelled(harness: Harness) -> None:
    """A status we have never seen: status_changed once, no cancel, polling goes on."""
    h = harness
    h.configure(
        policies=[
            {
                "name": "any",
                "action": "cancel",
                "when": {"age_above": "0s", "status_in": ["queued_for_gpu"]},
            }
        ]
    )
    h.sim.simulator.faults.append(
        Fault(
            "GET",
            "/batches/batch_odd",
            200,
            times=2,
            body=('{"id": "batch_odd", "status": "queued_for_gpu", "created_at": 1764320000}'),
        )
    )
    await h.track("batch_odd")
    await h.tick()
    await h.tick(advance=60)
    assert h.sim.calls("batch_odd", "cancel") == 0
    assert (await h.kinds("batch_odd")) == ["tracked", "status_changed", "policy_matched"]
    assert (await h.row("batch_odd"))["status"] == "queued_for_gpu"


@SQLITE_ONLY
async def test_one_503_or_429_still_judges_in_the_same_tick(harness: Harness) -> None:
    """A transient failure is retried inside the tick: the batch is judged and cancelled."""
    h = harness
    h.configure(policies=COST_CAP)
    for name in ("batch_503", "batch_429"):
        progressed(h, name, 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    h.sim.simulator.faults += [
        Fault("GET", "/batches/batch_503", 503),
        Fault("GET", "/batches/batch_429", 429, headers={"Retry-After": "1"}),
    ]
    await h.track("batch_503", "batch_429")
    summary = await h.tick()
    assert summary.poll_failed == 0 and summary.cancel_succeeded == 2
    assert h.sim.calls("batch_503", "get") == 1  # the fault answered the first GET


async def test_two_ticks_cancel_nothing_twice(harness: Harness) -> None:
    """Running again cancels nothing again; events tell the story in order."""
    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track("batch_big")
    await h.tick()
    await h.tick(advance=60)
    await h.tick(advance=60)
    assert h.sim.calls("batch_big", "cancel") == 1
    events = await h.store.journal.list_events("batch_big")
    story = [(e["kind"], e["from_status"], e["to_status"], e["policy"]) for e in events]
    assert story == [
        ("tracked", None, None, None),
        ("status_changed", None, "in_progress", None),
        ("counts_changed", None, "in_progress", None),
        ("policy_matched", None, "in_progress", "cost-cap"),
        ("cancel_requested", "in_progress", None, "cost-cap"),
        ("cancel_succeeded", "in_progress", "cancelling", "cost-cap"),
        ("status_changed", "in_progress", "cancelling", None),
        ("status_changed", "cancelling", "cancelled", None),
        ("cancel_settled", "cancelling", "cancelled", "cost-cap"),
    ]
    settled = events[-1]["detail"]
    assert (settled["final_cost_usd"], settled["projected_cost_usd"]) == (6.5, 13.0)
    assert settled["saved_usd"] == 6.5
    assert (await h.row("batch_big"))["next_poll_at"] is None  # terminal: never polled again


@SQLITE_ONLY
async def test_dry_run_records_but_never_cancels(harness: Harness) -> None:
    """dry_run: policy_matched is recorded, no cancel is sent, the hold is counted."""
    h = harness
    h.configure(policies=COST_CAP, dry_run=True)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track("batch_big")
    summary = await h.tick()
    await h.tick(advance=60)
    assert h.sim.calls("batch_big", "cancel") == 0
    assert summary.cancel_held == 1
    kinds = await h.kinds("batch_big")
    assert kinds.count("policy_matched") == 1 and "cancel_requested" not in kinds
    matched = [
        e for e in await h.store.journal.list_events("batch_big") if e["kind"] == "policy_matched"
    ]
    assert matched[0]["detail"]["dry_run"] is True


@SQLITE_ONLY
async def test_cancel_refused_refreshes_and_does_not_retry(harness: Harness) -> None:
    """The batch finished between poll and cancel: 409, cancel_failed (already terminal),
    the batch refreshed at once, and no cancel is ever sent again."""
    h = harness
    h.configure(policies=COST_CAP)
    h.sim.simulator.add("batch_big", model=LLAMA, age=90_000, total=10, rate=10)
    stale = h.sim.simulator.batches["batch_big"].wire(h.clock.time()) | {
        "status": "in_progress",
        "usage": {"input_tokens": 50_000_000, "output_tokens": 100_000_000},
    }
    import json

    h.sim.simulator.faults.append(Fault("GET", "/batches/batch_big", 200, body=json.dumps(stale)))
    await h.track("batch_big")
    await h.tick()
    await h.tick(advance=60)
    failed = [
        e for e in await h.store.journal.list_events("batch_big") if e["kind"] == "cancel_failed"
    ]
    assert len(failed) == 1 and failed[0]["detail"]["reason"] == "already_terminal"
    assert failed[0]["detail"]["http_status"] == 409
    assert h.sim.calls("batch_big", "cancel") == 1
    assert h.sim.calls("batch_big", "get") == 1  # the refresh; the first poll was scripted
    row = await h.row("batch_big")
    assert (row["cancel_outcome"], row["status"]) == ("refused", "completed")


@SQLITE_ONLY
async def test_failed_cancel_is_retried_with_a_growing_backoff(harness: Harness) -> None:
    """A cancel that keeps failing with a 500 (transient) is tried again after 15 s,
    30 s, 60 s, 120 s…, never given up for it, and uses no attempt."""
    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    h.sim.simulator.faults.append(Fault("POST", "/batches/batch_big/cancel", 500, times=100))
    await h.track("batch_big")
    for _ in range(5):
        await h.tick(advance=60)
    events = await h.store.journal.list_events("batch_big")
    waits = [e["detail"]["retry_in_s"] for e in events if e["kind"] == "cancel_failed"]
    assert waits == [15, 30, 60, 120]
    assert "cancel_abandoned" not in [e["kind"] for e in events]
    assert (await h.row("batch_big"))["cancel_attempts"] == 0


async def test_crash_after_cancel_requested_reconciles(harness: Harness) -> None:
    """cancel_requested with no outcome (a crash) settles from the provider's state."""
    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track("batch_big")
    await h.store.claims.apply([], [])
    # What a crash right after sending leaves behind: requested, no outcome; provider cancelling.
    from watchdog.core.models import BatchObject
    from watchdog.core.rows import Change

    change = Change(
        "sim",
        "batch_big",
        wire=BatchObject(id="batch_big", status="in_progress"),
        cancel_policy="cost-cap",
        cancel_requested_at=h.clock.now(),
        cancel_attempts=1,
    )
    await h.store.claims.apply([change], [])
    h.sim.simulator.batches["batch_big"].cancel_at = h.clock.time()
    await h.tick(advance=1)
    assert h.sim.calls("batch_big", "cancel") == 0
    succeeded = [
        e for e in await h.store.journal.list_events("batch_big") if e["kind"] == "cancel_succeeded"
    ]
    assert succeeded[0]["detail"] == {"reconciled": True}


@SQLITE_ONLY
async def test_404_records_poll_failed_and_keeps_the_batch(harness: Harness) -> None:
    """An unknown batch: poll_failed once per streak; it stays tracked."""
    h = harness
    h.configure(policies=COST_CAP)
    await h.track("batch_gone")
    await h.tick()
    await h.tick(advance=60)
    assert (await h.kinds("batch_gone")) == ["tracked", "poll_failed"]
    row = await h.row("batch_gone")
    assert row["poll_failures"] == 2 and "404" in row["last_error"]
    assert row["next_poll_at"] is not None


@SQLITE_ONLY
async def test_bad_answer_does_not_break_the_tick(harness: Harness) -> None:
    """Garbage for one batch is that batch's poll_failed; the others are judged as usual."""
    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    h.sim.simulator.add("batch_junk")
    h.sim.simulator.faults.append(
        Fault("GET", "/batches/batch_junk", 200, body='{"id": "batch_junk", "status": 7}')
    )
    await h.track("batch_big", "batch_junk")
    summary = await h.tick()
    assert summary.poll_failed == 1 and summary.cancel_succeeded == 1
    failed = [
        e for e in await h.store.journal.list_events("batch_junk") if e["kind"] == "poll_failed"
    ]
    assert "invalid answer: status" in failed[0]["detail"]["error"]


async def test_row_inserted_by_another_program_is_filled_in(harness: Harness) -> None:
    """A bare (provider, batch_id) row is picked up, polled and filled in."""
    h = harness
    h.configure(policies=COST_CAP)
    h.sim.simulator.add("batch_ext", total=10, rate=0)
    async with h.store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO batches (provider, batch_id) VALUES ('sim', 'batch_ext')"
        )
    await h.tick()
    row = await h.row("batch_ext")
    assert row["status"] == "in_progress" and row["tracked_at"] is not None
    assert row["request_total"] == 10


@SQLITE_ONLY
async def test_bad_id_or_provider_in_the_table_never_reaches_the_network(harness: Harness) -> None:
    """A row another program wrote with a bad id or provider fails its poll, sends nothing."""
    h = harness
    h.configure(policies=COST_CAP)
    async with h.store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO batches (provider, batch_id) VALUES "
            "('sim', '../files/x'), ('nope', 'batch_1')"
        )
    summary = await h.tick()
    assert summary.poll_failed == 2 and h.sim.simulator.calls == {}
    errors = {r["batch_id"]: r["last_error"] for r in await table_rows(h.store)}
    assert "invalid batch id" in errors["../files/x"]
    assert "provider 'nope' is not configured" in errors["batch_1"]


@SQLITE_ONLY
async def test_pricing_missing_is_logged_once(harness: Harness) -> None:
    """A model with usage but no price: unknown cost, one pricing_missing event."""
    h = harness
    h.configure(policies=COST_CAP)
    h.sim.simulator.add("batch_x", model="acme/unpriced", total=100, rate=1)
    await h.track("batch_x")
    await h.tick(advance=5)
    await h.tick(advance=60)
    assert (await h.kinds("batch_x")).count("pricing_missing") == 1
    assert (await h.row("batch_x"))["cost_usd"] is None


@SQLITE_ONLY
async def test_max_cancels_per_tick(harness: Harness) -> None:
    """No more than max_cancels_per_tick cancels go out in one tick; the rest wait."""
    h = harness
    h.configure(policies=COST_CAP, safety={"max_cancels_per_tick": 2, "cool_down": None})
    names = [f"batch_{i}" for i in range(5)]
    for name in names:
        progressed(h, name, 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track(*names)
    first = await h.tick()
    assert first.cancel_succeeded == 2 and first.cancel_held == 3
    assert sum(h.sim.calls(n, "cancel") for n in names) == 2


@SQLITE_ONLY
async def test_logs_carry_event_names_and_context(harness: Harness) -> None:
    """Log lines use the event kinds and bind batch_id, provider, policy and statuses."""
    from structlog.testing import capture_logs

    h = harness
    h.configure(policies=COST_CAP)
    progressed(h, "batch_big", 1000, 2000, input_tokens=50_000, output_tokens=100_000)
    await h.track("batch_big")
    with capture_logs() as logs:
        await h.tick()
    cancel = next(e for e in logs if e["event"] == "cancel_succeeded")
    assert (
        cancel
        | {
            "batch_id": "batch_big",
            "provider": "sim",
            "policy": "cost-cap",
            "from_status": "in_progress",
            "to_status": "cancelling",
        }
        == cancel
    )
    summary = [e for e in logs if e["event"] == "tick_completed"]
    assert len(summary) == 1 and summary[0]["cancel_succeeded"] == 1


@SQLITE_ONLY
async def test_batch_without_usage_counts_or_model(harness: Harness) -> None:
    """A bare answer (no usage, request_counts or model) is tracked, judged, never cancelled."""
    h = harness
    h.configure(
        policies=[
            {"name": "cost", "action": "cancel", "when": {"cost_usd_above": 0}},
            {"name": "proj", "action": "cancel", "when": {"projected_cost_usd_above": 0}},
            {"name": "ratio", "action": "cancel", "when": {"failure_ratio_above": 0}},
            {"name": "slow", "action": "cancel", "when": {"progress_below": 1}},
            {
                "name": "model",
                "action": "cancel",
                "match": {"model": "*"},
                "when": {"age_above": 0},
            },
        ]
    )
    h.sim.simulator.faults.append(
        Fault(
            "GET",
            "/batches/batch_bare",
            200,
            times=2,
            body=(
                '{"id": "batch_bare", "status": "in_progress", "created_at": 1764320000,'
                ' "expires_at": null, "usage": null, "request_counts": null, "model": null}'
            ),
        )
    )
    await h.track("batch_bare")
    first = await h.tick()
    second = await h.tick(advance=60)
    assert first.polled == second.polled == 1
    assert first.cancel_requested == second.cancel_requested == 0
    assert (await h.kinds("batch_bare")) == ["tracked", "status_changed"]
    row = await h.row("batch_bare")
    assert row["cost_usd"] is None and row["request_total"] is None


@SQLITE_ONLY
async def test_unavailable_provider_backs_off_and_recovers(harness: Harness) -> None:
    """A provider that keeps failing opens its circuit (provider_unavailable), stops being
    called, and the other providers are served as usual; once it answers again after the
    back-off, provider_recovered is recorded."""
    from pydantic import SecretStr

    from watchdog.providers.breaker import Breaker
    from watchdog.providers.client import ProviderClient

    h = harness
    h.configure(policies=COST_CAP)
    now = [0.0]
    dead = ProviderClient(
        "dead", base_url="http://127.0.0.1:9/v1", api_key=SecretStr("k"), max_retries=0
    )
    dead.breaker = Breaker(threshold=3, base=30, clock=lambda: now[0], rng=lambda: 0.0)
    assert h.engine is not None
    h.engine.use_clients({"sim": h.client, "dead": dead})
    h.sim.simulator.add("batch_ok", total=10, rate=0)
    await h.track("batch_ok")
    for i in range(5):
        await h.store.tracking.track("dead", f"batch_d{i}", {}, h.clock.now())
    async with dead:
        first = await h.tick()
        assert first.polled == 1 and first.poll_failed == 5
        assert not dead.breaker.available
        dead.base_url = h.sim.url  # the provider comes back…
        for i in range(5):
            h.sim.simulator.add(f"batch_d{i}", total=10, rate=0)
        second = await h.tick(advance=60)
        assert second.polled == 1  # the other provider, as usual…
        assert h.sim.calls("batch_d0", "get") == 0  # …while this one is left alone
        now[0] = 31
        await h.tick(advance=60)
    kinds = [e["kind"] for e in await h.store.journal.list_events() if e["batch_id"] is None]
    assert kinds == ["provider_unavailable", "provider_recovered"]
    assert dead.breaker.available


def test_breaker_doubles_its_back_off() -> None:
    """Failed probes double the delay (with jitter), up to the cap."""
    from watchdog.providers.breaker import Breaker

    now = [0.0]
    heard: list[tuple[str, int]] = []
    breaker = Breaker(
        threshold=2,
        base=10,
        cap=35,
        clock=lambda: now[0],
        rng=lambda: 0.0,
        listener=lambda change, failures: heard.append((change, failures)),
    )
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow() and breaker.open_until == 10
    delays = []
    for _ in range(3):
        now[0] = breaker.open_until or 0
        assert breaker.allow() and not breaker.allow()  # one probe at a time
        start = now[0]
        breaker.failure()
        delays.append((breaker.open_until or 0) - start)
    assert delays == [20, 35, 35]
    breaker.success()
    assert breaker.available and heard == [("unavailable", 2), ("recovered", 5)]


async def test_bulk_refresh_reads_pages_not_single_batches(harness: Harness) -> None:
    """With many batches of one provider due, a tick reads them 100 a page from the list
    endpoint; a batch the pages do not show gets its own GET."""
    h = harness
    h.configure(policies=COST_CAP)
    assert h.engine is not None
    h.engine.refresher.bulk_threshold = 100
    ids = [f"batch_{i:03d}" for i in range(250)]
    for i, batch_id in enumerate(ids):
        h.sim.simulator.add(batch_id, total=10, rate=0, age=1000 + i)
    await h.track(*ids, "batch_unlisted")  # unknown to the provider: a single GET, a 404
    first = await h.tick()
    assert first.polled == 250 and first.poll_failed == 1
    assert h.sim.calls("(list)", "list") == 3
    assert sum(h.sim.calls(i, "get") for i in ids) == 0
    second = await h.tick(advance=60)
    assert second.polled == 250 and h.sim.calls("(list)", "list") == 6


async def test_one_replica_pages_a_providers_list_at_a_time(harness: Harness) -> None:
    """Two replicas ticking together: the one paging the provider's list polls its due
    batches; the other leaves them to it (no second pass, no single GETs) and takes
    the provider up again once the pass is over."""
    h = harness
    h.configure(policies=COST_CAP)
    assert h.engine is not None and h.settings is not None
    h.engine.refresher.bulk_threshold = 100
    other = Engine(
        store=h.store,
        clients={"sim": h.client},
        rules=h.engine.rules,
        cadence=Cadence(h.settings.poll_interval),
        owner="other",
        clock=h.clock.now,
    )
    other.refresher.bulk_threshold = 100
    ids = [f"batch_{i:03d}" for i in range(250)]
    for i, batch_id in enumerate(ids):
        h.sim.simulator.add(batch_id, total=10, rate=0, age=1000 + i)
    await h.track(*ids)
    h.sim.simulator.list_latency = 0.2  # the pass takes three of these
    paging = asyncio.create_task(h.tick())
    while h.sim.calls("(list)", "list") == 0:
        await asyncio.sleep(0.01)
    meanwhile = await other.tick()
    first = await paging
    assert meanwhile.claimed == 0 and first.polled == 250
    assert h.sim.calls("(list)", "list") == 3
    assert sum(h.sim.calls(i, "get") for i in ids) == 0
    # The pass is over: the other replica may page the list now. While it does, the
    # first has nothing to wake up early for (the batches due are the other's).
    h.clock.advance(60)
    paging = asyncio.create_task(other.tick())
    while h.sim.calls("(list)", "list") == 3:
        await asyncio.sleep(0.01)
    assert await h.store.claims.next_due(h.clock.now()) is not None
    assert await h.engine.next_due() is None
    assert (await paging).polled == 250 and h.sim.calls("(list)", "list") == 6


@SQLITE_ONLY
async def test_bulk_refresh_survives_an_endless_list(harness: Harness) -> None:
    """A list whose has_more never turns false is cut short; nothing is lost."""
    from watchdog.sim.chaos import Chaos

    h = harness
    h.configure(policies=COST_CAP)
    assert h.engine is not None
    h.engine.refresher.bulk_threshold = 100
    h.sim.simulator.chaos = Chaos(rate=1.0, kinds=("endless_list",), routes=("list",))
    ids = [f"batch_{i:03d}" for i in range(150)]
    for batch_id in ids:
        h.sim.simulator.add(batch_id, total=10, rate=0)
    await h.track(*ids)
    summary = await h.tick()
    assert summary.polled == 150
    assert h.sim.calls("(list)", "list") <= 150 // 100 + 20


@SQLITE_ONLY
async def test_adaptive_polling_comes_back_as_the_cap_is_passed(harness: Harness) -> None:
    """Spending $0.30 a minute with 10-minute polls: at $4 the next poll comes as the $5
    cap is passed (about 200 s later), not a whole interval later."""
    h = harness
    h.configure(policies=COST_CAP, poll_interval="10m")
    # $0.002 a request, 2.5 requests a second; 500 requests done at the first poll.
    h.sim.simulator.add(
        "batch_x",
        model=LLAMA,
        total=100_000,
        rate=2.5,
        age=200,
        input_tokens=40_000,
        output_tokens=16_000,
    )
    await h.track("batch_x")
    await h.tick()  # $1.00, no history yet: the regular interval
    row = await h.row("batch_x")
    assert 590 <= (row["next_poll_at"] - h.clock.now()).total_seconds() <= 600
    await h.tick(advance=600)  # $4.00 at $0.30 a minute: the cap is 200 s away
    row = await h.row("batch_x")
    wait = (row["next_poll_at"] - h.clock.now()).total_seconds()
    assert 200 <= wait <= 202, wait
    await h.tick(advance=wait)
    cost = (await h.row("batch_x"))["cost_usd"]
    assert 5 < cost <= 5.02, cost  # a second of spend past the cap
    assert h.sim.calls("batch_x", "cancel") == 1


@SQLITE_ONLY
async def test_adaptive_polling_for_clock_driven_limits(harness: Harness) -> None:
    """A batch 40 minutes from expiry under `expires_within: 30m` is polled again when it
    enters the last 30 minutes, not an hour later."""
    h = harness
    h.configure(
        poll_interval="1h",
        policies=[{"name": "late", "action": "cancel", "when": {"expires_within": "30m"}}],
    )
    h.sim.simulator.add("batch_late", model=LLAMA, total=100_000, rate=1.0, age=86_400 - 2_400)
    await h.track("batch_late")
    await h.tick()
    row = await h.row("batch_late")
    wait = (row["next_poll_at"] - h.clock.now()).total_seconds()
    assert 600 <= wait <= 602, wait
    await h.tick(advance=wait)
    assert h.sim.calls("batch_late", "cancel") == 1


async def test_a_failed_tick_gives_its_claims_back(harness: Harness) -> None:
    """A tick that fails after claiming (the write refused) leaves no lease behind: the
    next tick polls the batches at once instead of a lease later."""
    import pytest

    h = harness
    h.configure(policies=COST_CAP)
    frozen(h, "batch_a")
    await h.track("batch_a")
    original = h.store.claims.apply

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    h.store.claims.apply = refuse  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        await h.tick()
    row = await h.row("batch_a")
    assert row["lease_owner"] is None and row["lease_expires_at"] is None
    h.store.claims.apply = original  # type: ignore[method-assign]
    assert (await h.tick()).polled == 1


async def test_a_wall_clock_stepped_back_is_planned_again(harness: Harness) -> None:
    """The host's clock was an hour fast and is corrected: every poll planned by the
    fast clock lies an hour ahead. The next tick sees the wall clock move an hour less
    than the monotonic one, plans those polls for now (``clock_stepped``) and polls; the
    batch whose spend crosses its cap meanwhile is cancelled on that tick, not an hour
    later. A step forward is said too, and moves nothing."""
    h = harness
    h.configure(policies=COST_CAP)
    assert h.engine is not None
    fast, mono = [3600.0], [0.0]
    engine = Engine(
        store=h.store,
        clients={"sim": h.client},
        rules=h.engine.rules,
        cadence=h.engine.cadence,
        owner="stepped",
        clock=lambda: h.clock.now() + timedelta(seconds=fast[0]),
        monotonic=lambda: mono[0],
    )
    # $0.0065 a request, 100 a second: over the $5 cap after 8 s.
    h.sim.simulator.add("batch_big", model=LLAMA, total=1_000_000, rate=100,
                        input_tokens=50_000, output_tokens=100_000)  # fmt: skip
    await h.track("batch_big")
    assert (await engine.tick()).polled == 1
    h.clock.advance(900)
    mono[0] += 900
    fast[0] = 0.0  # corrected: an hour back
    summary = await engine.tick()
    assert (summary.polled, summary.cancel_succeeded) == (1, 1)
    (stepped,) = [e for e in await h.store.journal.list_events() if e["kind"] == "clock_stepped"]
    assert stepped["detail"] == {"step_s": -3600.0, "replanned": 1}
    h.clock.advance(60)
    mono[0] += 60
    fast[0] = 7200.0  # and two hours forward
    await engine.tick()
    steps = [
        e["detail"] for e in await h.store.journal.list_events() if e["kind"] == "clock_stepped"
    ]
    assert steps[-1] == {"step_s": 7200.0, "replanned": 0}
