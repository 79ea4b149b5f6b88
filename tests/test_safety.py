"""Safe by construction, against the simulator and a real database with injected time:
`for:` clocks, history conditions, exemptions, blast-radius limits, follow-through and
webhooks."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import SQLITE_ONLY, Harness
from watchdog.core.config import Webhook
from watchdog.daemon.webhooks import WebhookSender

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


def cost_cap(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "cost-cap", "when": {"cost_usd_above": 5}, "action": "cancel", **extra}]


def expensive(h: Harness, batch_id: str, total: int = 1_000_000, **params: Any) -> None:
    """$6.50 so far (1,000 requests done), going on at about a request a second for hours."""
    batch = h.sim.simulator.add(
        batch_id,
        model=LLAMA,
        total=total,
        rate=1.0,
        age=1000,
        input_tokens=50_000,
        output_tokens=100_000,
        **params,
    )
    batch.rate = 1000 / (h.clock.time() - batch.run_start)


def cancels(h: Harness, *ids: str) -> int:
    return sum(h.sim.calls(i, "cancel") for i in ids)


@SQLITE_ONLY
async def test_for_acts_after_continuous_match_only(harness: Harness) -> None:
    """for: 2m acts on the first tick at or after two minutes of continuous match."""
    h = harness
    h.configure(policies=cost_cap(**{"for": "2m"}), poll_interval="10s")
    expensive(h, "b")
    await h.track("b")
    acted_at = None
    for step in range(20):
        await h.tick(advance=0 if step == 0 else 10)
        if acted_at is None and cancels(h, "b"):
            acted_at = step * 10
    assert acted_at == 120
    matched = [e for e in await h.store.journal.list_events("b") if e["kind"] == "policy_matched"]
    assert matched[0]["detail"]["observed"]["held_for"] == 120


@SQLITE_ONLY
async def test_for_clock_restarts_after_a_gap(harness: Harness) -> None:
    """A poll where the condition does not hold resets the clock."""
    h = harness
    h.configure(policies=cost_cap(**{"for": "2m"}))
    expensive(h, "b")
    batch = h.sim.simulator.batches["b"]
    await h.track("b")
    await h.tick()
    batch.input_tokens, batch.output_tokens = 10, 10  # below the cap
    await h.tick(advance=60)
    batch.input_tokens, batch.output_tokens = 50_000, 100_000
    await h.tick(advance=60)  # the clock starts again here
    await h.tick(advance=60)
    assert cancels(h, "b") == 0
    await h.tick(advance=60)
    assert cancels(h, "b") == 1


async def test_for_clock_survives_a_restart(harness: Harness) -> None:
    """A new engine (a restarted daemon) keeps the persisted clock."""
    h = harness
    h.configure(policies=cost_cap(**{"for": "2m"}))
    expensive(h, "b")
    await h.track("b")
    await h.tick()
    await h.tick(advance=60)
    h.configure(policies=cost_cap(**{"for": "2m"}))  # a fresh Engine, as after a restart
    await h.tick(advance=60)
    assert cancels(h, "b") == 1


@SQLITE_ONLY
async def test_eta_after_expiry(harness: Harness) -> None:
    """At the observed rate, one batch cannot finish 1h before expiry (cancelled) and
    one can (spared); without two polls there is no rate to judge by."""
    h = harness
    h.configure(
        policies=[
            {
                "name": "too-slow",
                "action": "cancel",
                "when": {"eta_after_expiry": True, "finalizing_allowance": "1h"},
            }
        ]
    )
    # 2 h to expiry; slow has 60,400 requests left at 0.5/s, quick 1,000 at 1.25/s.
    h.sim.simulator.add("slow", model=LLAMA, total=100_000, rate=0.5, age=86_400 - 7_200)
    h.sim.simulator.add("quick", model=LLAMA, total=100_000, rate=1.25, age=86_400 - 7_200)
    await h.track("slow", "quick")
    await h.tick()
    assert cancels(h, "slow", "quick") == 0
    await h.tick(advance=60)
    assert (cancels(h, "slow"), cancels(h, "quick")) == (1, 0)


@SQLITE_ONLY
async def test_stalled_for(harness: Harness) -> None:
    """No movement of completed+failed for the given time, while in progress."""
    h = harness
    h.configure(policies=[{"name": "stalled", "action": "cancel", "when": {"stalled_for": "10m"}}])
    h.sim.simulator.add("stuck", model=LLAMA, total=100, rate=0.0, age=60)
    h.sim.simulator.add("moving", model=LLAMA, total=100_000, rate=1.0, age=60)
    await h.track("stuck", "moving")
    for _ in range(11):  # ten minutes after the first poll: not yet more than 10m
        await h.tick(advance=60)
    assert cancels(h, "stuck") == 0
    await h.tick(advance=60)
    assert (cancels(h, "stuck"), cancels(h, "moving")) == (1, 0)


async def test_tick_cap_trips_the_safety_until_resume(harness: Harness) -> None:
    """30 violators, max_cancels_per_tick 10: exactly 10 cancelled, safety_tripped
    recorded, the rest only alerted — until `resume`."""
    from watchdog.daemon import gate

    h = harness
    h.configure(
        policies=cost_cap(),
        safety={"max_cancels_per_tick": 10, "max_cancels_per_hour": 1000, "cool_down": None},
    )
    ids = [f"b{i:02d}" for i in range(30)]
    for batch_id in ids:
        expensive(h, batch_id)
    await h.track(*ids)
    first = await h.tick()
    assert cancels(h, *ids) == 10 and first.safety_tripped == 1
    tripped = [e for e in await h.store.journal.list_events() if e["kind"] == "safety_tripped"]
    assert tripped[0]["detail"]["would_cancel"] == 30
    assert tripped[0]["detail"]["cancelled"] == 10
    second = await h.tick(advance=60)
    assert cancels(h, *ids) == 10 and second.cancel_held == 20
    assert await gate.resume(h.store, h.clock.now(), by="test")
    await h.tick(advance=60)
    assert cancels(h, *ids) == 20


async def test_hour_cap_and_cool_down(harness: Harness) -> None:
    """The hourly cap counts every cancel in the last hour; a cool-down ends the trip."""
    h = harness
    h.configure(
        policies=cost_cap(),
        safety={"max_cancels_per_tick": 10, "max_cancels_per_hour": 4, "cool_down": "30m"},
    )
    ids = [f"b{i}" for i in range(6)]
    for batch_id in ids:
        expensive(h, batch_id)
    await h.track(*ids)
    await h.tick()
    assert cancels(h, *ids) == 4
    await h.tick(advance=29 * 60)
    assert cancels(h, *ids) == 4  # tripped: alert-only
    await h.tick(advance=31 * 60)  # cool-down over, and the hour has passed
    assert cancels(h, *ids) == 6
    kinds = [e["kind"] for e in await h.store.journal.list_events() if e["batch_id"] is None]
    assert kinds == ["safety_tripped", "safety_resumed"]


@SQLITE_ONLY
async def test_exempt_by_metadata_is_judged_never_cancelled(harness: Harness) -> None:
    """metadata watchdog=off: policy_matched is recorded, no cancel is sent."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b", metadata={"watchdog": "off"})
    await h.track("b")
    summary = await h.tick()
    assert cancels(h, "b") == 0 and summary.cancel_held == 1
    assert "policy_matched" in await h.kinds("b")


@SQLITE_ONLY
async def test_silence_expires(harness: Harness) -> None:
    """A silence holds the cancel until it expires; then the batch is cancelled."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b")
    await h.track("b")
    until = h.clock.now() + timedelta(hours=2)
    assert await h.store.tracking.exempt("b", None, until, "customer demo", h.clock.now()) == [
        "sim"
    ]
    await h.tick()
    await h.tick(advance=3600)
    assert cancels(h, "b") == 0
    await h.tick(advance=3601)
    assert cancels(h, "b") == 1
    kinds = await h.kinds("b")
    assert kinds.index("exempted") < kinds.index("cancel_requested")


async def test_cancel_follow_through(harness: Harness) -> None:
    """After a cancel the batch is polled every 15 s; stuck in cancelling past 15 min
    records cancel_stuck once."""
    h = harness
    h.configure(policies=cost_cap())
    expensive(h, "b", cancel_delay=3600)
    await h.track("b")
    await h.tick()
    row = await h.row("b")
    assert (row["next_poll_at"] - h.clock.now()).total_seconds() <= 15
    for _ in range(70):  # 17.5 minutes of 15 s ticks
        await h.tick(advance=15)
    assert (await h.kinds("b")).count("cancel_stuck") == 1


@SQLITE_ONLY
async def test_webhook_gets_one_message_per_cancel(harness: Harness, aiohttp_server: Any) -> None:
    """A real local receiver gets a Slack-compatible message for each cancel."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/T000/secret-token", hook)
    server = await aiohttp_server(app)
    h = harness
    url = str(server.make_url("/hooks/T000/secret-token"))
    async with WebhookSender([Webhook(url=url, events=["cancel_succeeded"])]) as sender:
        h.configure(policies=cost_cap())
        assert h.engine is not None
        h.engine.listen(sender.submit)
        for batch_id in ("b1", "b2"):
            expensive(h, batch_id)
        await h.track("b1", "b2")
        await h.tick()
        await h.tick(advance=60)
    assert sorted(m["event"]["batch_id"] for m in received) == ["b1", "b2"]
    assert all(m["event"]["kind"] == "cancel_succeeded" for m in received)
    assert received[0]["text"].startswith("batch-watchdog: cancel_succeeded on sim/b")


async def hanging_receiver(aiohttp_server: Any) -> tuple[asyncio.Event, str]:
    """A webhook receiver that answers only once the event is set."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    server = await aiohttp_server(app)
    return release, str(server.make_url("/hook"))


@SQLITE_ONLY
async def test_a_hung_webhook_never_holds_a_tick(harness: Harness, aiohttp_server: Any) -> None:
    """With the receiver hanging, the tick still completes and records its cancel."""
    release, url = await hanging_receiver(aiohttp_server)
    h = harness
    hook = Webhook(url=url, timeout="60s")
    async with WebhookSender([hook]) as sender:
        h.configure(policies=cost_cap())
        assert h.engine is not None
        h.engine.listen(sender.submit)
        expensive(h, "b")
        await h.track("b")
        summary = await asyncio.wait_for(h.tick(), timeout=60)
        assert summary.cancel_succeeded == 1
        release.set()


async def test_webhook_retries_and_never_logs_the_url(aiohttp_server: Any) -> None:
    """A 500 is retried with backoff; a receiver that keeps failing is logged by host
    only, never with the token in its URL."""
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    from watchdog.core.events import Event

    answers = [500, 200]
    received: list[str] = []

    async def flaky(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response(status=answers.pop(0) if answers else 503)

    app = web.Application()
    app.router.add_post("/ok/tok-123", flaky)
    app.router.add_post("/down/tok-456", _fail)
    server = await aiohttp_server(app)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    hooks = [
        Webhook(url=str(server.make_url("/ok/tok-123"))),
        Webhook(url=str(server.make_url("/down/tok-456"))),
    ]
    event = Event(datetime.now(UTC), "sim", "b", "cancel_failed", policy="p")
    with capture_logs() as logs:
        async with WebhookSender(hooks, sleep=sleep) as sender:
            sender.submit([event])
    assert received == ["/ok/tok-123", "/ok/tok-123"]  # one retry, then delivered
    failed = [e for e in logs if e["event"] == "webhook_failed"]
    assert len(failed) == 1 and failed[0]["url"] == "http://127.0.0.1/…"
    assert "tok-456" not in repr(logs) and len(sleeps) >= 4


async def _fail(request: web.Request) -> web.Response:
    return web.Response(status=502)


async def test_webhooks_undelivered_at_shutdown_are_said(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages still queued or in flight when the daemon stops are dropped with a
    warning that counts them by kind, never silently."""
    from datetime import UTC, datetime

    from structlog.testing import capture_logs

    from watchdog.core.events import Event
    from watchdog.daemon import webhooks

    release, url = await hanging_receiver(aiohttp_server)
    monkeypatch.setattr(webhooks, "DRAIN_SECONDS", 0.2)
    hook = Webhook(url=url, timeout="60s")
    now = datetime.now(UTC)
    events = [Event(now, "sim", f"b{i}", "cancel_succeeded", policy="p") for i in range(6)]
    with capture_logs() as logs:
        async with WebhookSender([hook]) as sender:
            sender.submit(events)
    release.set()
    dropped = [e for e in logs if e["event"] == "webhooks_dropped"]
    assert len(dropped) == 1 and dropped[0]["messages"] == 6
    assert dropped[0]["kinds"] == {"cancel_succeeded": 6}
