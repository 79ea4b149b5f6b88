"""Notifications people act on: each webhook format's shape (generic, Slack Block Kit,
PagerDuty Events API v2) from tables of events, and through a real local receiver that
checks the generic format's HMAC-SHA256 signature over the bytes it got."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from watchdog.core.config import NotifySettings, Webhook
from watchdog.core.events import Event, Kind
from watchdog.daemon.webhooks import WebhookSender
from watchdog.views import notices

AT = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
BASE = "https://watchdog.example.com"
SAID = {"action": "cancel", "observed": {"cost_usd": 6.25}, "note": "<b>"}
MATCHED = Event(AT, "sim", "batch_1", Kind.POLICY_MATCHED, policy="cost-cap", detail=SAID)
ENDED = Event(AT, "sim", "batch_1", Kind.STATUS_CHANGED, from_status="cancelling",
              to_status="cancelled")  # fmt: skip
TRIPPED = Event(AT, None, None, Kind.SAFETY_TRIPPED, detail={"held": 3})


def test_generic_is_the_event_and_a_link() -> None:
    body = notices.generic(MATCHED, BASE)
    assert body["text"] == "batch-watchdog: policy_matched on sim/batch_1 by policy cost-cap"
    assert body["event"]["kind"] == "policy_matched" and body["event"]["batch_id"] == "batch_1"
    assert body["link"] == f"{BASE}/batches/sim/batch_1"
    assert "link" not in notices.generic(MATCHED, None)
    assert "link" not in notices.generic(TRIPPED, BASE)  # daemon-wide: no batch to open


def test_slack_blocks_carry_the_figures_escaped() -> None:
    body = notices.slack(MATCHED, BASE)
    header, section, actions = body["blocks"]
    assert header["type"] == "header" and "policy_matched" in header["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in section["fields"]}
    assert fields["*Batch*"] == "batch_1" and fields["*Policy*"] == "cost-cap"
    assert fields["*cost usd*"] == "6.25" and fields["*note*"] == "&lt;b&gt;"
    assert actions["elements"][0]["url"] == f"{BASE}/batches/sim/batch_1"
    assert len(notices.slack(MATCHED, None)["blocks"]) == 2  # no address known: no button
    assert actions["elements"][0]["text"]["text"] == "Open the batch"
    dry = Event(AT, "sim", "batch_1", Kind.POLICY_MATCHED, policy="cost-cap",
                detail={"action": "cancel", "dry_run": True})  # fmt: skip
    (button,) = notices.slack(dry, BASE)["blocks"][-1]["elements"]
    assert button["text"]["text"] == "Cancel it from its page"  # a link to act


@pytest.mark.parametrize(
    ("event", "action", "dedup", "severity"),
    [
        (MATCHED, "trigger", "batch-watchdog/sim/batch_1", "warning"),
        (ENDED, "resolve", "batch-watchdog/sim/batch_1", None),  # the batch's alert ends
        (TRIPPED, "trigger", "batch-watchdog/safety_tripped", "error"),
    ],
)
def test_pagerduty_triggers_and_resolves_by_batch(
    event: Event, action: str, dedup: str, severity: str | None
) -> None:
    body = notices.pagerduty(event, "R0UTING", BASE)
    assert body["routing_key"] == "R0UTING" and body["event_action"] == action
    assert body["dedup_key"] == dedup
    if severity is None:
        assert "payload" not in body
    else:
        assert body["payload"]["severity"] == severity and body["payload"]["summary"]


def test_pagerduty_needs_its_routing_key() -> None:
    with pytest.raises(ValidationError, match="routing key"):
        Webhook(url="https://events.pagerduty.com/v2/enqueue", format="pagerduty")
    with pytest.raises(ValidationError, match="base_url"):
        NotifySettings(base_url="not a url")


async def test_each_format_reaches_a_receiver_and_generic_is_signed(
    aiohttp_server: Any,
) -> None:
    got: list[tuple[str, bytes, dict[str, str]]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((request.path, await request.read(), dict(request.headers)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{name}", receive)
    server = await aiohttp_server(app)
    kinds = [Kind.POLICY_MATCHED]
    hooks = [
        Webhook(url=str(server.make_url("/generic")), events=kinds, secret_env="S"),
        Webhook(url=str(server.make_url("/slack")), events=kinds, format="slack"),
        Webhook(url=str(server.make_url("/pd")), events=kinds, format="pagerduty",
                secret_env="PD"),
    ]  # fmt: skip
    secrets = ["shared-secret-0123", None, "R0UTING"]

    async def facts(event: Event) -> dict[str, Any]:
        return {"model": "meta-llama/x", "cost_usd": 6.25, "projected_cost_usd": 18.0}

    async with WebhookSender(hooks, secrets=secrets, base_url=BASE, facts=facts) as sender:
        sender.submit([MATCHED, ENDED])  # the hooks want only policy_matched
    by_path = {path: (body, headers) for path, body, headers in got}
    assert sorted(by_path) == ["/generic", "/pd", "/slack"]
    body, headers = by_path["/generic"]
    stamp = headers[notices.TIMESTAMP_HEADER]
    mac = hmac.new(b"shared-secret-0123", stamp.encode() + b"." + body, hashlib.sha256)
    assert headers[notices.SIGNATURE_HEADER] == "sha256=" + mac.hexdigest()
    assert abs(time.time() - int(stamp)) < 600  # a receiver refuses an old one
    assert b'"batch_1"' in body
    assert b'"blocks"' in by_path["/slack"][0]
    assert b"*Model*\\nmeta-llama/x" in by_path["/slack"][0]  # the batch's facts
    assert b"*Projected cost usd*\\n18" in by_path["/slack"][0]
    assert b'"projected_cost_usd":18.0' in by_path["/pd"][0]
    assert b'"routing_key":"R0UTING"' in by_path["/pd"][0]
    assert notices.SIGNATURE_HEADER not in by_path["/slack"][1]


async def test_a_message_goes_without_facts_the_database_cannot_give(
    aiohttp_server: Any,
) -> None:
    got: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/slack", receive)
    server = await aiohttp_server(app)

    async def broken(event: Event) -> dict[str, Any]:
        raise ConnectionError("database away")

    hook = Webhook(url=str(server.make_url("/slack")), events=[Kind.POLICY_MATCHED], format="slack")
    async with WebhookSender([hook], facts=broken) as sender:
        sender.submit([MATCHED])
    assert len(got) == 1 and b'"blocks"' in got[0] and b"Model" not in got[0]
