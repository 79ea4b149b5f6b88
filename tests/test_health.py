"""/healthz, /readyz and /metrics on a real aiohttp server, and the liveness rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdog.core.cadence import Cadence
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.scheduler import TickLoop

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


async def _noop() -> None:
    return None


@pytest.mark.parametrize(
    ("finished_ago", "running_for", "alive"),
    [
        (None, None, True),  # just started
        (30, None, True),
        (179, None, True),
        (181, None, False),  # three 60 s intervals without a tick
        (400, 100, True),  # a long tick is still alive for a while
        (400, 181, False),  # but not forever
    ],
)
def test_liveness_rule(finished_ago: int | None, running_for: int | None, alive: bool) -> None:
    """Alive while a tick finished, or is running, within three intervals."""
    loop = TickLoop(_noop, Cadence(timedelta(seconds=60)), clock=lambda: T0)
    now = T0 + timedelta(seconds=max(finished_ago or 0, running_for or 0) + 1)
    if finished_ago is not None:
        loop.last_tick_finished = now - timedelta(seconds=finished_ago)
    if running_for is not None:
        loop.last_tick_started = now - timedelta(seconds=running_for)
        loop._inflight = object()  # type: ignore[assignment]
    if finished_ago is None and running_for is None:
        now = T0 + timedelta(seconds=10)
    assert loop.alive(now) is alive


def server(alive: bool, problem: str | None, metrics: Metrics) -> HealthServer:
    async def ready() -> tuple[bool, str]:
        return problem is None, problem or ""

    async def refresh() -> None:
        metrics.set_tracked([("deepinfra", "in_progress", 3, 1.5), ("deepinfra", None, 1, None)])

    return HealthServer(alive=lambda now: alive, ready=ready, metrics=metrics, refresh=refresh)


async def test_healthy_and_ready(aiohttp_client: Any) -> None:
    """200s with a live loop and a ready database; metrics in Prometheus text."""
    metrics = Metrics()
    metrics.polls.labels("deepinfra", "ok").inc(5)
    metrics.cancels.labels("deepinfra", "cost-cap", "succeeded").inc()
    client = await aiohttp_client(server(True, None, metrics).app())
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    response = await client.get("/metrics")
    text = await response.text()
    assert response.status == 200 and response.content_type == "text/plain"
    for line in (
        'watchdog_polls_total{outcome="ok",provider="deepinfra"} 5.0',
        'watchdog_cancels_total{outcome="succeeded",policy="cost-cap",provider="deepinfra"} 1.0',
        'watchdog_tracked_batches{provider="deepinfra",status="in_progress"} 3.0',
        'watchdog_tracked_batches{provider="deepinfra",status="unpolled"} 1.0',
        'watchdog_tracked_cost_usd{provider="deepinfra"} 1.5',
        "watchdog_tick_duration_seconds_bucket",
    ):
        assert line in text, line


async def test_stalled_and_not_ready(aiohttp_client: Any) -> None:
    """503s with a one-line reason when the loop stalls or the database is away."""
    client = await aiohttp_client(server(False, "database unreachable: gone", Metrics()).app())
    health = await client.get("/healthz")
    assert health.status == 503
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert await ready.text() == "not ready: database unreachable: gone\n"


def test_a_provider_status_never_becomes_a_label() -> None:
    """Statuses the daemon does not know are counted under `unknown`: a provider cannot
    grow the series without bound."""
    from decimal import Decimal

    metrics = Metrics()
    metrics.set_tracked(
        [
            ("p", "in_progress", 2, Decimal("1.5")),
            ("p", "weird-1", 1, None),
            ("p", "weird-2", 3, None),
            ("p", None, 1, None),
        ]
    )
    text = metrics.render().decode()
    assert 'status="unknown"} 4.0' in text and "weird" not in text
    assert 'status="in_progress"} 2.0' in text and 'status="unpolled"} 1.0' in text
