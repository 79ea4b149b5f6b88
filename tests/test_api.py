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
from watchdog.daemon.actions import PageActions
from watchdog.daemon.api import PREFIX, Api
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.sessions import Sessions
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

    async def page() -> str:
        return "<!doctype html><html><body><main><p>status</p></main></body></html>"

    api = Api(h.store, h.engine, h.settings, access)
    actions = PageActions(api, Sessions(access, h.clock.now))
    return HealthServer(alive=lambda now: True, ready=ready, metrics=Metrics(), refresh=nothing,
                        page=page, access=access, api=api, actions=actions)  # fmt: skip


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
        (r.method.lower(), r.resource.canonical.removeprefix(PREFIX))
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(PREFIX) and r.method != "HEAD"
    }
    described = {(m, p) for p, ops in served["paths"].items() for m in ops}
    assert routes == described


def as_operator(reason: str | None = "on-call: runaway spend") -> dict[str, Any]:
    body = {} if reason is None else {"reason": reason}
    return {"headers": {"Authorization": f"Bearer {OPERATOR}"}, "json": body}


async def test_writes_need_an_operators_token_and_a_reason(
    harness: Harness, aiohttp_client: Any
) -> None:
    h = harness
    await polled(h, 1)
    client = await aiohttp_client(server(h, guarded=False).app())
    url = f"{PREFIX}/batches/sim/batch_0/unexempt"
    assert (await client.post(url, json={"reason": "x"})).status == 401  # even on loopback
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    forbidden = await client.post(url, json={"reason": "x"}, headers=viewer)
    assert forbidden.status == 403 and "viewer" in (await forbidden.json())["error"]
    for body in ({}, {"reason": "  "}, {"reason": "x" * 501}):
        answer = await client.post(url, headers=as_operator()["headers"], json=body)
        assert answer.status == 400 and "reason" in (await answer.json())["error"], body
    not_json = await client.post(url, headers=as_operator()["headers"], data=b"[1")
    assert not_json.status == 400
    assert (await client.post(url, **as_operator())).status == 200


async def test_track_untrack_exempt_unexempt_say_who_and_why(
    harness: Harness, aiohttp_client: Any
) -> None:
    h = harness
    h.configure(policies=COST_CAP)
    h.sim.simulator.add("batch_new", total=100, rate=1)
    client = await aiohttp_client(server(h, guarded=True).app())
    body = {"provider": "sim", "batch_id": "batch_new", "labels": {"team": "ops"}}
    track = as_operator("pipeline submitted it")
    track["json"] |= body
    assert (await client.post(f"{PREFIX}/batches", **track)).status == 201
    assert (await client.post(f"{PREFIX}/batches", **track)).status == 200  # tracked already
    for bad in ({"provider": "nope"}, {"batch_id": "bad id"}, {"labels": ["x"]}):
        wrong = as_operator()
        wrong["json"] |= body | bad
        assert (await client.post(f"{PREFIX}/batches", **wrong)).status == 400, bad
    exempt = as_operator("customer demo")
    exempt["json"]["for"] = "2h"
    url = f"{PREFIX}/batches/sim/batch_new"
    assert (await client.post(f"{url}/exempt", **exempt)).status == 200
    assert (await client.post(f"{url}/unexempt", **as_operator("demo over"))).status == 200
    assert (await client.post(f"{url}/untrack", **as_operator("not ours"))).status == 200
    gone = await client.post(f"{url}/untrack", **as_operator("again"))
    assert gone.status == 404
    said = [(e["kind"], (e["detail"] or {}).get("actor"), (e["detail"] or {}).get("reason"))
            for e in await h.store.journal.list_events("batch_new")]  # fmt: skip
    assert said == [
        ("tracked", "oncall", "pipeline submitted it"),
        ("exempted", "oncall", "customer demo"),
        ("unexempted", "oncall", "demo over"),
        ("untracked", "oncall", "not ours"),
    ]
    assert (await h.row_or_none("batch_new")) is None


@pytest.mark.parametrize("case", ["live", "dry_run", "exempt"])
async def test_cancel_now_goes_through_the_plan_once(
    harness: Harness, aiohttp_client: Any, case: str
) -> None:
    """The ask is recorded (cancel_asked: who, why) and the next tick plans it as a
    policy's cancel: sent once when live (a second ask sends nothing more); held in a
    dry run and for an exempt batch."""
    h = harness
    h.configure(policies=[], dry_run=case == "dry_run")
    meta = {"watchdog": "off"} if case == "exempt" else {}
    h.sim.simulator.add("batch_big", total=100, rate=1, metadata=meta)
    await h.track("batch_big")
    await h.tick()
    client = await aiohttp_client(server(h, guarded=False).app())
    url = f"{PREFIX}/batches/sim/batch_big/cancel"
    answer = await client.post(url, **as_operator("spend runaway"))
    assert answer.status == 202 and (await answer.json())["queued"] is True
    await h.tick(advance=1)
    await client.post(url, **as_operator("again"))
    await h.tick(advance=60)
    sent = h.sim.calls("batch_big", "cancel")
    kinds = await h.kinds("batch_big")
    asked = [
        e for e in await h.store.journal.list_events("batch_big") if e["kind"] == "cancel_asked"
    ]
    assert [e["detail"]["actor"] for e in asked] == ["oncall", "oncall"]
    assert asked[0]["detail"]["reason"] == "spend runaway"
    if case == "live":
        assert sent == 1 and kinds.count("cancel_requested") == 1
        (requested,) = [e for e in await h.store.journal.list_events("batch_big")
                        if e["kind"] == "cancel_requested"]  # fmt: skip
        assert requested["policy"] == "manual"
    else:
        assert sent == 0 and "cancel_requested" not in kinds
    assert await h.store.coord.cancel_asks() == {}  # planned, whatever the plan said
    missing = await client.post(f"{PREFIX}/batches/sim/batch_nope/cancel", **as_operator())
    assert missing.status == 404


async def test_resume_through_the_api(harness: Harness, aiohttp_client: Any) -> None:
    from watchdog.daemon import gate

    h = harness
    h.configure(policies=[])
    client = await aiohttp_client(server(h, guarded=False).app())
    body = await (await client.post(f"{PREFIX}/resume", **as_operator("checked"))).json()
    assert body == {"resumed": False}
    await gate.trip(h.store, h.clock.now(), held=3)
    body = await (await client.post(f"{PREFIX}/resume", **as_operator("checked"))).json()
    assert body == {"resumed": True}
    (event,) = [e for e in await h.store.journal.list_events() if e["kind"] == "safety_resumed"]
    assert event["detail"] | {} == {"by": "operator", "actor": "oncall", "reason": "checked"}


async def test_a_batch_has_a_page_of_its_own(harness: Harness, aiohttp_client: Any) -> None:
    """Its timeline from the samples (cost and progress, the cost cap drawn on it), its
    explanation and its events; guarded off loopback as the status page is."""
    h = harness
    h.configure(policies=COST_CAP, budgets=[{"name": "all", "limit_usd": 100, "window": "1d"}])
    llama = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    h.sim.simulator.add("batch_0", total=1000, rate=2, model=llama, input_tokens=2000,
                        output_tokens=1000)  # fmt: skip
    await h.track("batch_0")
    for _ in range(4):
        await h.tick(advance=60)
    client = await aiohttp_client(server(h, guarded=False).app())
    answer = await client.get("/batches/sim/batch_0")
    html = await answer.text()
    assert (
        answer.status == 200 and "default-src 'none'" in answer.headers["Content-Security-Policy"]
    )
    assert "<svg" in html and "<polyline" in html  # the timeline, from four samples
    assert "cost-cap" in html and "$5" in html  # the applying threshold, labelled
    assert "budget all: this batch&#x27;s share" in html  # its share of the budget
    assert "What the next tick will do" in html and "status_changed" in html
    assert (await client.get("/batches/sim/batch_nope")).status == 404
    assert (await client.get("/batches/sim/bad%20id")).status == 400
    guarded = await aiohttp_client(server(h, guarded=True).app())
    assert (await guarded.get("/batches/sim/batch_0")).status == 401
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    assert (await guarded.get("/batches/sim/batch_0", headers=viewer)).status == 200


async def logged_in(client: Any, token: str) -> None:
    answer = await client.post("/login", data={"token": token}, allow_redirects=False)
    assert answer.status == 303, await answer.text()
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_an_operator_acts_from_the_page_and_nobody_else_can(
    harness: Harness, aiohttp_client: Any
) -> None:
    """Log in with the operator's token (a session cookie: HttpOnly, SameSite=Strict),
    and the batch page has forms carrying the session's CSRF field; a post without the
    session, with another CSRF value, or from a viewer's session is refused (403)."""
    h = harness
    await polled(h, 1)
    client = await aiohttp_client(server(h, guarded=True).app())
    assert (await client.get("/login")).status == 200
    wrong = await client.post("/login", data={"token": "nope"}, allow_redirects=False)
    assert wrong.status == 401
    url = "/actions/batches/sim/batch_0/exempt"
    form = {"for": "2h", "reason": "customer demo"}
    assert (await client.post(url, data=form | {"csrf": "x"})).status == 403  # no session
    await logged_in(client, OPERATOR)
    page = await (await client.get("/batches/sim/batch_0")).text()  # the cookie lets it in
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert (await client.post(url, data=form | {"csrf": "0" * 64})).status == 403
    done = await client.post(url, data=form | {"csrf": csrf}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/batches/sim/batch_0"
    row = await h.row("batch_0")
    assert row["exempt_reason"] == "customer demo" and row["exempt_until"] is not None
    (exempted,) = [e for e in await h.store.journal.list_events("batch_0")
                   if e["kind"] == "exempted"]  # fmt: skip
    assert exempted["detail"]["actor"] == "oncall"
    again = await (await client.get("/batches/sim/batch_0")).text()
    assert "Lift the silence" in again and "Resume cancels" in await (await client.get("/")).text()
    viewer = await aiohttp_client(server(h, guarded=True).app())
    await logged_in(viewer, VIEWER)
    seen = await (await viewer.get("/batches/sim/batch_0")).text()
    assert "<form" not in seen  # a viewer sees no forms
    refused = await viewer.post(url, data=form | {"csrf": "x"})
    assert refused.status == 403


async def test_the_forms_work_in_a_browser(harness: Harness, aiohttp_server: Any) -> None:
    """Headless Chromium: log in as the operator, exempt a batch from its page and see
    it exempt; logged in as a viewer, the same page has no forms; the page's CSP
    refuses nothing (no console error)."""
    from playwright.async_api import async_playwright

    from tests.test_page import BROWSER_FLAGS, chromium

    h = harness
    await polled(h, 1)
    site = await aiohttp_server(server(h, guarded=False).app())
    errors: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=BROWSER_FLAGS)
        try:
            page = await browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(str(site.make_url("/login")))
            await page.fill("input[name=token]", OPERATOR)
            await page.click("button[type=submit]")
            await page.goto(str(site.make_url("/batches/sim/batch_0")))
            exempt = page.locator("form[action$='/exempt']")
            await exempt.locator("select[name=for]").select_option("8h")
            await exempt.locator("input[name=reason]").fill("watching it myself")
            await exempt.locator("button").click()
            await page.wait_for_url("**/batches/sim/batch_0")
            assert await page.locator("text=Lift the silence").count() == 1
            assert await page.locator("text=watching it myself").count() >= 1
            viewer = await (await browser.new_context()).new_page()  # a cookie jar of its own
            await viewer.goto(str(site.make_url("/login")))
            await viewer.fill("input[name=token]", VIEWER)
            await viewer.click("button[type=submit]")
            await viewer.goto(str(site.make_url("/batches/sim/batch_0")))
            assert await viewer.locator("h2", has_text="Timeline").count() == 1
            assert await viewer.locator("form").count() == 0  # a viewer sees no forms
        finally:
            await browser.close()
    assert (await h.row("batch_0"))["exempt_reason"] == "watching it myself"
    assert errors == []
