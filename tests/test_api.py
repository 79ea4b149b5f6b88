"""The JSON API over real HTTP on both databases: every read route, the roles (no
token, a wrong one, a viewer's, an operator's) on and off loopback, bad parameters, and
the OpenAPI document (valid, and naming exactly the routes served)."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from tests.conftest import Harness
from tests.test_engine import COST_CAP
from watchdog.daemon.access import Access
from watchdog.daemon.api import PREFIX, Api
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.views.openapi import document

VIEWER, OPERATOR = "viewer-token-0123456789", "operator-token-0123456789"
TOKENS = [("grafana", "viewer", VIEWER), ("oncall", "operator", OPERATOR)]


def server(h: Harness, *, guarded: bool) -> HealthServer:
    assert h.engine is not None and h.settings is not None
    access = Access(TOKENS, guarded=guarded)  # type: ignore[arg-type]

    async def ready() -> tuple[bool, str]:
        return True, ""

    async def nothing() -> None:
        return None

    api = Api(h.store, h.engine, h.settings, access)
    return HealthServer(alive=lambda now: True, ready=ready, metrics=Metrics(),
                        refresh=nothing, access=access, api=api)  # fmt: skip


async def polled(h: Harness, n: int = 5) -> list[str]:
    """N batches tracked and polled once; every other one labelled team=research."""
    h.configure(policies=COST_CAP)
    ids = [f"batch_{i}" for i in range(n)]
    for i, batch_id in enumerate(ids):
        h.sim.simulator.add(batch_id, total=100, rate=1)
        labels = {"team": "research"} if i % 2 == 0 else {}
        await h.store.tracking.track("sim", batch_id, labels, h.clock.now())
    await h.tick()
    return ids


async def test_batches_a_page_at_a_time_with_filters(harness: Harness, aiohttp_client: Any) -> None:
    h = harness
    ids = await polled(h)
    client = await aiohttp_client(server(h, guarded=False).app())
    seen, after = [], None
    while True:
        query = {"limit": "2"} | ({"after": after} if after else {})
        body = await (await client.get(f"{PREFIX}/batches", params=query)).json()
        seen += [b["id"] for b in body["batches"]]
        if (after := body["next"]) is None:
            break
    assert seen == sorted(ids)
    body = await (await client.get(f"{PREFIX}/batches", params={"label": "team=research"})).json()
    assert [b["id"] for b in body["batches"]] == ["batch_0", "batch_2", "batch_4"]
    assert body["batches"][0]["labels"] == {"team": "research"}
    status = {"status": "in_progress", "provider": "sim"}
    body = await (await client.get(f"{PREFIX}/batches", params=status)).json()
    assert len(body["batches"]) == 5 and body["next"] is None
    for bad in ({"limit": "0"}, {"limit": "x"}, {"after": "nokey"}, {"label": "team"}):
        answer = await client.get(f"{PREFIX}/batches", params=bad)
        assert answer.status == 400 and "error" in await answer.json(), bad


async def test_one_batch_with_its_events_and_explanation(
    harness: Harness, aiohttp_client: Any
) -> None:
    h = harness
    await polled(h, 1)
    client = await aiohttp_client(server(h, guarded=False).app())
    body = await (await client.get(f"{PREFIX}/batches/sim/batch_0")).json()
    assert body["batch"]["id"] == "batch_0" and body["batch"]["status"] == "in_progress"
    assert [e["kind"] for e in body["events"]][:2] == ["tracked", "status_changed"]
    assert body["explanation"]["next_tick"] == "poll it; no policy holds"
    assert body["explanation"]["policies"][0]["policy"] == "cost-cap"
    missing = await client.get(f"{PREFIX}/batches/sim/batch_nope")
    assert missing.status == 404 and "not tracked" in (await missing.json())["error"]
    bad = await client.get(f"{PREFIX}/batches/sim/bad%20id")
    assert bad.status == 400


async def test_events_and_budgets(harness: Harness, aiohttp_client: Any) -> None:
    h = harness
    await polled(h, 2)
    client = await aiohttp_client(server(h, guarded=False).app())
    query = [("kind", "tracked"), ("kind", "status_changed"), ("limit", "3")]
    body = await (await client.get(f"{PREFIX}/events", params=query)).json()
    assert len(body["events"]) == 3
    assert {e["kind"] for e in body["events"]} <= {"tracked", "status_changed"}
    one = await (await client.get(f"{PREFIX}/events", params={"batch_id": "batch_1"})).json()
    assert {e["batch_id"] for e in one["events"]} == {"batch_1"}
    later = await client.get(f"{PREFIX}/events", params={"since": "2099-01-01T00:00:00"})
    assert (await later.json())["events"] == []
    wrong = await client.get(f"{PREFIX}/events", params={"kind": "nonsense"})
    assert wrong.status == 400 and "valid: tracked" in (await wrong.json())["error"]
    when = await client.get(f"{PREFIX}/events", params={"since": "yesterday"})
    assert when.status == 400
    budgets = await (await client.get(f"{PREFIX}/budgets")).json()
    assert budgets == {"budgets": []}


@pytest.mark.parametrize(
    ("guarded", "token", "status"),
    [
        (False, None, 200),  # loopback: reads are open
        (False, "wrong", 401),  # a token given must be a known one
        (False, VIEWER, 200),
        (True, None, 401),  # off loopback: nothing without a token
        (True, "wrong", 401),
        (True, VIEWER, 200),
        (True, OPERATOR, 200),
    ],
)
async def test_who_may_read(
    harness: Harness, aiohttp_client: Any, guarded: bool, token: str | None, status: int
) -> None:
    h = harness
    h.configure(policies=[])
    client = await aiohttp_client(server(h, guarded=guarded).app())
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    for path in ("/batches", "/events", "/budgets", "/openapi.json"):
        answer = await client.get(PREFIX + path, headers=headers)
        assert answer.status == status, path
        if status == 401:
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert VIEWER not in await answer.text() and OPERATOR not in await answer.text()
    assert (await client.get("/healthz")).status == 200  # the probes stay open


async def test_the_openapi_document_is_valid_and_names_every_route(
    harness: Harness, aiohttp_client: Any
) -> None:
    h = harness
    h.configure(policies=[])
    app = server(h, guarded=False).app()
    client = await aiohttp_client(app)
    served = await (await client.get(f"{PREFIX}/openapi.json")).json()
    assert served == document()
    validate(served)  # raises on an invalid OpenAPI 3.1 document
    routes = {
        r.resource.canonical.removeprefix(PREFIX)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(PREFIX)
    }
    assert routes == set(served["paths"])
