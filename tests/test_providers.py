"""The HTTP client against real aiohttp servers: retries and Retry-After, error
classes, body truncation, and no request at all for a bad id. Sleeps are recorded,
not slept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from tests.conftest import API_KEY, Sim
from watchdog.core.errors import CancelRefused, NotFound, PermanentError, TemporaryError
from watchdog.core.models import InvalidBatchId
from watchdog.providers.client import ProviderClient
from watchdog.providers.http import backoff, retry_after
from watchdog.sim.simulator import Fault


async def serving(aiohttp_server: Any, handler: Any) -> str:
    """A server answering every ``GET /v1/batches/{id}`` with ``handler``; its base URL."""
    app = web.Application()
    app.router.add_get("/v1/batches/{id}", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(url: str, sleeps: Sleeps, **kw: Any) -> ProviderClient:
    params: dict[str, Any] = {"api_key": SecretStr(API_KEY), "timeout": 2.0, "sleep": sleeps}
    return ProviderClient("sim", base_url=url, **(params | kw))


def fault(sim: Sim, method: str, path: str, status: int, **kw: Any) -> None:
    sim.simulator.faults.append(Fault(method, path, status, **kw))


async def test_get_sends_the_key_and_parses(sim: Sim) -> None:
    """A GET carries the bearer key and returns the parsed batch."""
    sim.simulator.add("batch_1", total=10)
    async with client(sim.url, Sleeps()) as c:
        batch = await c.get("batch_1")
    assert batch.id == "batch_1" and batch.status == "in_progress"
    assert sim.calls("batch_1", "get") == 1


async def test_wrong_key_is_permanent_and_not_echoed(sim: Sim) -> None:
    """401 is not retried, and the error never carries the key."""
    sim.simulator.add("batch_1")
    sleeps = Sleeps()
    async with client(sim.url, sleeps, api_key=SecretStr("sk-wrong-key-123")) as c:
        with pytest.raises(PermanentError) as caught:
            await c.get("batch_1")
    assert caught.value.status == 401 and sleeps == []
    assert "sk-wrong-key-123" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "headers", "expected_delay"),
    [
        (503, {}, None),
        (500, {}, None),
        (429, {"Retry-After": "1"}, 1.0),
        (429, {"retry-after-ms": "250"}, 0.25),
        (429, {"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        (408, {}, None),
    ],
)
async def test_one_transient_failure_is_retried(
    sim: Sim, status: int, headers: dict[str, str], expected_delay: float | None
) -> None:
    """One 5xx/429/408 costs a retry, not the poll; a server-given delay is honoured."""
    sim.simulator.add("batch_1")
    fault(sim, "GET", "/batches/batch_1", status, headers=headers)
    sleeps = Sleeps()
    async with client(sim.url, sleeps) as c:
        assert (await c.get("batch_1")).id == "batch_1"
    assert len(sleeps) == 1
    if expected_delay is None:
        assert 0.375 <= sleeps[0] <= 0.5
    else:
        assert sleeps[0] == pytest.approx(expected_delay)


async def test_retries_are_bounded(sim: Sim) -> None:
    """After max_retries the temporary error surfaces, with its status."""
    sim.simulator.add("batch_1")
    fault(sim, "GET", "/batches/batch_1", 502, times=10)
    sleeps = Sleeps()
    async with client(sim.url, sleeps, max_retries=2) as c:
        with pytest.raises(TemporaryError) as caught:
            await c.get("batch_1")
    assert caught.value.status == 502 and len(sleeps) == 2


async def test_long_retry_after_is_left_to_the_next_tick(sim: Sim) -> None:
    """A Retry-After longer than a tick should wait is not slept inside the tick."""
    sim.simulator.add("batch_1")
    fault(sim, "GET", "/batches/batch_1", 429, headers={"Retry-After": "600"})
    sleeps = Sleeps()
    async with client(sim.url, sleeps) as c:
        with pytest.raises(TemporaryError) as caught:
            await c.get("batch_1")
    assert caught.value.retry_after == 600 and sleeps == []


async def test_404_is_not_found(sim: Sim) -> None:
    """An unknown batch is NotFound, at once."""
    sleeps = Sleeps()
    async with client(sim.url, sleeps) as c:
        with pytest.raises(NotFound, match="HTTP 404: No batch found"):
            await c.get("batch_missing")
    assert sleeps == []


async def test_cancel_on_terminal_batch_is_refused_without_retry(sim: Sim) -> None:
    """409 'Cannot cancel…' means already terminal: CancelRefused, one call only."""
    sim.simulator.add("batch_done", age=90_000, total=10, rate=10)
    sleeps = Sleeps()
    async with client(sim.url, sleeps) as c:
        with pytest.raises(CancelRefused, match="Cannot cancel a batch with status 'completed'"):
            await c.cancel("batch_done")
    assert sim.calls("batch_done", "cancel") == 1 and sleeps == []


async def test_400_on_cancel_is_also_refused(sim: Sim) -> None:
    """Providers that answer 400 instead of 409 mean the same."""
    sim.simulator.add("batch_1")
    fault(sim, "POST", "/batches/batch_1/cancel", 400)
    async with client(sim.url, Sleeps()) as c:
        with pytest.raises(CancelRefused):
            await c.cancel("batch_1")


async def test_cancel_returns_cancelling(sim: Sim) -> None:
    """A cancel on an active batch answers the batch in 'cancelling'."""
    sim.simulator.add("batch_1")
    async with client(sim.url, Sleeps()) as c:
        assert (await c.cancel("batch_1")).status == "cancelling"


@pytest.mark.parametrize("batch_id", ["../files/x", "a b", "", ".", "..", "x/../../y"])
async def test_bad_id_never_reaches_the_network(sim: Sim, batch_id: str) -> None:
    """Ids that could change the URL are refused before any request."""
    async with client(sim.url, Sleeps()) as c:
        with pytest.raises(InvalidBatchId):
            await c.get(batch_id)
        with pytest.raises(InvalidBatchId):
            await c.cancel(batch_id)
    assert sim.simulator.calls == {}


async def test_html_200_is_a_bad_answer(sim: Sim) -> None:
    """A proxy's HTML page with status 200 is a clear error, not a crash."""
    fault(sim, "GET", "/batches/b", 200, body="<html><body>Gateway</body></html>")
    async with client(sim.url, Sleeps()) as c:
        with pytest.raises(PermanentError, match="answer is not JSON: <html><body>Gateway"):
            await c.get("b")


async def test_answer_for_another_batch_is_refused(aiohttp_server: Any) -> None:
    """A body describing a different batch is never recorded under this one."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "batch_other", "status": "completed", "created_at": 1})

    url = await serving(aiohttp_server, handler)
    async with client(url, Sleeps()) as c:
        with pytest.raises(PermanentError, match="answer is for batch 'batch_other'"):
            await c.get("batch_1")


async def test_error_bodies_are_truncated_and_scrubbed(aiohttp_server: Any) -> None:
    """A huge error body is cut to one short line, and an echoed key is masked."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"bad key {API_KEY} " + "x" * 5000)

    url = await serving(aiohttp_server, handler)
    async with client(url, Sleeps()) as c:
        with pytest.raises(PermanentError) as caught:
            await c.get("b")
    message = str(caught.value)
    assert API_KEY not in message and "[redacted]" in message
    assert len(message) < 260 and "\n" not in message


async def test_slow_server_times_out_as_temporary(aiohttp_server: Any) -> None:
    """No answer within the timeout is a temporary error (and is retried)."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    url = await serving(aiohttp_server, handler)
    sleeps = Sleeps()
    async with client(url, sleeps, timeout=0.2, max_retries=1) as c:
        with pytest.raises(TemporaryError, match=r"no answer within 0\.2s"):
            await c.get("b")
    assert len(sleeps) == 1


async def test_connection_refused_is_temporary() -> None:
    """Nothing listening: a temporary connection error naming no secret."""
    async with client("http://127.0.0.1:9/v1", Sleeps(), max_retries=0) as c:
        with pytest.raises(TemporaryError, match="connection failed"):
            await c.get("b")


async def test_list_pages(sim: Sim) -> None:
    """The list endpoint pages newest first with an after cursor."""
    for i in range(5):
        sim.simulator.add(f"batch_{i}", age=100 - i)
    async with client(sim.url, Sleeps()) as c:
        first = await c.list(limit=3)
        second = await c.list(limit=3, after=first.last_id)
    assert [b.id for b in first.data] == ["batch_4", "batch_3", "batch_2"] and first.has_more
    assert [b.id for b in second.data] == ["batch_1", "batch_0"] and not second.has_more


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": format_datetime(NOW + timedelta(seconds=7), usegmt=True)}, 7.0),
        ({"retry-after": format_datetime(NOW - timedelta(seconds=7), usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "x", "retry-after": "3"}, 3.0),
        ({}, None),
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms first, then Retry-After as seconds or an HTTP date."""
    assert retry_after(headers, NOW) == expected


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(0, 0.375, 0.5), (1, 0.75, 1.0), (4, 6.0, 8.0), (10, 6.0, 8.0)]
)
def test_backoff_is_jittered_and_capped(attempt: int, low: float, high: float) -> None:
    """0.5 s doubling, capped at 8 s, with up to 25 % jitter."""
    assert backoff(attempt, lambda: 0.0) == high
    assert backoff(attempt, lambda: 1.0) == low


async def test_a_key_across_the_cut_leaves_no_piece(aiohttp_server: Any) -> None:
    """A non-JSON error body whose echoed key straddles the 800-character cut, with
    whitespace that collapses it into the shown part: no piece of the key is shown."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=" " * 780 + API_KEY + " tail")

    url = await serving(aiohttp_server, handler)
    async with client(url, Sleeps()) as c:
        with pytest.raises(PermanentError) as caught:
            await c.get("b")
    message = str(caught.value)
    assert "[redacted]" in message
    assert not any(API_KEY[i : i + 8] in message for i in range(len(API_KEY) - 8))


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_size_limit_fails_its_call(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    """A body larger than the cap is not read whole: that call fails, clearly."""
    from watchdog.providers import http

    monkeypatch.setattr(http, "MAX_BODY", 10_000)

    async def handler(request: web.Request) -> web.StreamResponse:
        if declared:
            return web.Response(text="x" * 50_000)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(50):
            await resp.write(b"x" * 1000)
        return resp

    url = await serving(aiohttp_server, handler)
    async with client(url, Sleeps()) as c:
        with pytest.raises(PermanentError, match="over the 10000 byte limit"):
            await c.get("b")


async def test_a_redirect_is_never_followed(aiohttp_server: Any) -> None:
    """A 302 answering a cancel is a failure, not a GET of somewhere else."""
    elsewhere: list[str] = []

    async def cancel(request: web.Request) -> web.Response:
        raise web.HTTPFound(location=f"http://127.0.0.2:{request.url.port}/v1/batches/b")

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.method)
        return web.json_response({"id": "b", "status": "cancelling", "created_at": 1764320400})

    app = web.Application()
    app.router.add_post("/v1/batches/{id}/cancel", cancel)
    app.router.add_route("*", "/v1/batches/{id}", other)
    server = await aiohttp_server(app)
    async with client(str(server.make_url("/v1")), Sleeps()) as c:
        with pytest.raises(PermanentError, match=r"unexpected redirect to 127\.0\.0\.2"):
            await c.cancel("b")
    assert elsewhere == []
