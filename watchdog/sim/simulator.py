"""A built-in OpenAI-compatible Batch API whose batches progress with the clock:
requests complete and fail at set rates, usage accumulates, cancelling turns into
cancelled after a delay, unfinished batches expire at ``expires_at``. For the demo,
tests and benchmarks; ``/_sim/*`` routes let a test count calls and script faults."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web

from watchdog.clock import epoch
from watchdog.providers.dialects import DIALECTS, authorized, outward
from watchdog.sim.chaos import BEFORE, Chaos

Clock = Callable[[], float]
DEFAULT_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
MAX_PROMPT = 1_000_000  # tokens: a test's huge usage must not make a huge line
BROKEN = b'{"custom_id": "request-broken", "body": {"model": \n'
WORDS = "Summarise the following support ticket in two sentences and name its product. "


@dataclass(slots=True)
class SimBatch:
    """One simulated batch; its wire state is a pure function of the clock."""

    id: str
    created_at: float
    model: str | None = DEFAULT_MODEL
    endpoint: str = "/v1/chat/completions"
    metadata: dict[str, str] | None = None
    window: float = 86400.0
    total: int = 1000
    rate: float = 10.0  # requests per second once in progress
    failure_rate: float = 0.0
    validating_for: float = 0.0
    finalizing_for: float = 2.0
    input_tokens: int = 1000  # per completed request
    cached_tokens: int = 0
    output_tokens: int = 500
    reasoning_tokens: int = 0
    cancel_delay: float = 5.0
    cancel_latency: float = 0.0  # requests go on completing this long after a cancel
    usage_lag: float = 0.0  # the reported usage is this many seconds behind the spend
    with_usage: bool = True
    # Its input file: "requests" (one JSONL line per request, generated as it is read,
    # whatever its size), "malformed" (one line of them broken), "refused" (403),
    # "missing" (404), "none" (it names no input file: the default, as the scenarios
    # written before estimates expect).
    input_file: str = "none"
    max_tokens: int | None = 1024  # each request's output limit (None: none given)
    cancel_at: float | None = None

    @property
    def run_start(self) -> float:
        return self.created_at + self.validating_for

    @property
    def expires_at(self) -> float:
        return self.created_at + self.window

    def processed(self, t: float) -> int:
        if self.rate <= 0:
            return 0
        return min(self.total, math.floor(self.rate * max(0.0, t - self.run_start)))

    def status(self, t: float) -> tuple[str, float]:
        """The status at time t and the moment it was entered."""
        if self.cancel_at is not None and t >= self.cancel_at:
            done = self.cancel_at + self.cancel_delay
            return ("cancelled", done) if t >= done else ("cancelling", self.cancel_at)
        if t < self.run_start:
            return "validating", self.created_at
        if self.processed(min(t, self.expires_at)) < self.total:
            return (
                ("expired", self.expires_at)
                if t >= self.expires_at
                else ("in_progress", self.run_start)
            )
        done = self.run_start + self.total / self.rate
        if t < done + self.finalizing_for:
            return "finalizing", done
        return "completed", done + self.finalizing_for

    def stopped_at(self, t: float) -> float:
        """Until when requests were processed, as of t (a cancel takes its latency)."""
        stop = t if self.cancel_at is None else min(t, self.cancel_at + self.cancel_latency)
        return min(stop, self.expires_at)

    def completed(self, t: float) -> int:
        processed = self.processed(self.stopped_at(t))
        return processed - math.floor(processed * self.failure_rate)

    def wire(self, t: float) -> dict[str, Any]:
        status, since = self.status(t)
        processed = self.processed(self.stopped_at(t))
        failed = math.floor(processed * self.failure_rate)
        completed = processed - failed
        stamps: dict[str, int | None] = {
            f"{s}_at": None
            for s in (
                "in_progress",
                "finalizing",
                "completed",
                "failed",
                "expired",
                "cancelling",
                "cancelled",
            )
        }
        if status != "validating" and t >= self.run_start:
            stamps["in_progress_at"] = int(self.run_start)
        if self.cancel_at is not None:
            stamps["cancelling_at"] = int(self.cancel_at)
        if status != "validating":
            stamps[f"{status}_at"] = int(since)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            # "" where it names none: the SDKs' models want a string there.
            "input_file_id": "" if self.input_file == "none" else f"file-{self.id}",
            "completion_window": "24h",
            "status": status,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            **stamps,
            "output_file_id": f"file-out-{self.id}" if status == "completed" else None,
            "error_file_id": "",
            "errors": None,
            "request_counts": {"total": self.total, "completed": completed, "failed": failed},
            "metadata": self.metadata,
            "model": self.model,
            "usage": self._usage(self.completed(t - self.usage_lag)) if self.with_usage else None,
        }

    def input_lines(self) -> Iterator[bytes]:
        """Its input file, a line at a time: ``total`` chat requests, each as long as
        ``input_tokens`` at about 4 bytes a token, asking for ``max_tokens``."""
        for n in range(self.total):
            yield self._line(n)

    def input_size(self) -> int:
        """The input file's length, without writing it out (only the ids' digits vary)."""
        fixed = len(self._request(0)) - 1
        size, digits, low = self.total * fixed, 1, 0
        while low < self.total:
            high = min(10**digits, self.total)
            size += (high - low) * digits
            low, digits = high, digits + 1
        if self.input_file == "malformed" and self.total:
            size += len(BROKEN) - len(self._request(self.total // 2))
        return size

    def _line(self, n: int) -> bytes:
        broken = self.input_file == "malformed" and n == self.total // 2
        return BROKEN if broken else self._request(n)

    def _request(self, n: int) -> bytes:
        # Less the chat framing of 2 messages; no prompt is longer than a context window.
        size = min(max(self.input_tokens - 9, 1), MAX_PROMPT) * 4
        text = (WORDS * (size // len(WORDS) + 1))[:size]
        body: dict[str, Any] = {"model": self.model or DEFAULT_MODEL, "messages": [
            {"role": "system", "content": text[: size // 4]},
            {"role": "user", "content": text[size // 4 :]}]}  # fmt: skip
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        line = {"custom_id": f"request-{n}", "method": "POST", "url": self.endpoint, "body": body}
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"

    def _usage(self, completed: int) -> dict[str, Any]:
        inp, out = completed * self.input_tokens, completed * self.output_tokens
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": completed * self.cached_tokens},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": completed * self.reasoning_tokens},
            "total_tokens": inp + out,
        }


@dataclass(slots=True)
class Fault:
    """A scripted answer for the next ``times`` matching requests."""

    method: str
    path: str  # a prefix of the request path, after the base
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"error": {"message": "injected fault", "type": "server_error"}}'
    times: int = 1


class Simulator:
    """The simulated provider's state; ``app()`` serves it under ``/v1``."""

    SIM_FIELDS = frozenset(SimBatch.__dataclass_fields__) - {"id", "created_at", "cancel_at"}

    def __init__(
        self,
        *,
        clock: Clock = epoch,
        api_key: str | None = None,
        chaos: Chaos | None = None,
        api: str = "openai",
    ) -> None:
        self.kind = DIALECTS[api]  # the dialect served, from the same progression
        self.clock = clock
        self.chaos = chaos
        self.api_key = api_key
        self.batches: dict[str, SimBatch] = {}
        self.faults: list[Fault] = []
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # (time, "get" | "cancel", batch id, the Host it was asked by)
        self.log: list[tuple[float, str, str, str]] = []
        self.latency = 0.0  # seconds each GET of a batch takes to answer
        self.list_latency = 0.0  # and each list page
        self.cancel_wait = 0.0  # seconds a cancel takes before the provider acts on it
        self.date_offset = 0.0  # the Date header runs this many seconds off real time
        self._ids = itertools.count(1)

    def add(self, batch_id: str | None = None, *, age: float = 0.0, **params: Any) -> SimBatch:
        """Create a batch that was submitted ``age`` seconds ago."""
        batch_id = batch_id or f"batch_sim{next(self._ids):06d}"
        batch = SimBatch(id=batch_id, created_at=self.clock() - age, **params)
        self.batches[batch_id] = batch
        return batch

    @property
    def base_path(self) -> str:
        """Where the dialect's API lives on this server (the providers' base_url path)."""
        return {"azure": "/openai", "groq": "/openai/v1"}.get(self.kind.name, "/v1")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._server_date, self._faults_and_auth])
        # Azure serves its v1 data plane beside the dated one (no api-version there).
        bases = [self.base_path] + (["/openai/v1"] if self.kind.name == "azure" else [])
        for base in bases:
            root = f"{base}/{self.kind.batches}"
            app.router.add_post(root, self._create)
            app.router.add_get(root, self._list)
            app.router.add_get(root + "/{id}", self._get)
            app.router.add_post(root + "/{id}/cancel", self._cancel)
            if self.kind.files is not None:
                app.router.add_get(f"{base}/{self.kind.files}/{{id}}/content", self._file)
        app.router.add_get("/_sim/calls", self._calls)
        app.router.add_post("/_sim/faults", self._add_fault)
        return app

    @web.middleware
    async def _server_date(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The provider's own clock in the Date header, ``date_offset`` off the real one
        (to test a host whose clock was stepped)."""
        result: web.StreamResponse = await handler(request)
        if self.date_offset:
            when = epoch() + self.date_offset
            result.headers["Date"] = formatdate(when, usegmt=True)
        return result

    @web.middleware
    async def _faults_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_sim/"):
            fault = self._take_fault(request)
            if fault is not None:
                return web.Response(
                    status=fault.status,
                    text=fault.body,
                    headers=fault.headers,
                    content_type="application/json",
                )
            if self.api_key and not authorized(self.kind, request.headers, self.api_key):
                return _error(401, "Incorrect API key provided.", "invalid_request_error")
            dated = not request.path.startswith("/openai/v1/")
            if self.kind.params() and dated and not request.query.get("api-version"):
                return _error(
                    400, "api-version query parameter is required", "invalid_request_error"
                )
        kind = self.chaos.pick(request) if self.chaos and request.path.startswith("/v1/") else None
        if kind is not None and self.chaos is not None and kind in BEFORE:
            return await self.chaos.before(kind, request)
        result: web.StreamResponse = await handler(request)
        garble = kind is not None and isinstance(result, web.Response) and result.status == 200
        if garble and kind is not None and self.chaos is not None:
            assert isinstance(result, web.Response)
            return await self.chaos.after(kind, request, result)
        return result

    def _take_fault(self, request: web.Request) -> Fault | None:
        path = request.path.removeprefix(self.base_path)
        for fault in self.faults:
            if fault.method == request.method and path.startswith(fault.path) and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        sim = body.get("x_simulation") or {}
        unknown = set(sim) - self.SIM_FIELDS - {"age"}
        if unknown:
            return _error(
                400, f"unknown x_simulation keys: {sorted(unknown)}", "invalid_request_error"
            )
        batch = self.add(
            metadata=body.get("metadata"), model=body.get("model", DEFAULT_MODEL), **sim
        )
        return web.json_response(self._served(batch, self.clock()))

    async def _get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No batch found with that id.", "invalid_request_error")
        self._count(batch.id, "get", request.host)
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.json_response(self._served(batch, self.clock()))

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "No batch found with that id.", "invalid_request_error")
        if self.cancel_wait:  # a request dropped meanwhile was never acted on: not counted
            await asyncio.sleep(self.cancel_wait)
        self._count(batch.id, "cancel", request.host)
        now = self.clock()
        status, _ = batch.status(now)
        if status in ("completed", "failed", "expired", "cancelled"):
            message = f"Cannot cancel a batch with status '{status}'."
            if self.kind.name == "together":  # its spec's error body and status
                return web.json_response({"error": message}, status=400)
            return _error(self.kind.refuses, message, "invalid_request_error")
        if batch.cancel_at is None:
            batch.cancel_at = now
        return web.json_response(self._served(batch, now))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        """A batch's input file, generated as it is sent (hundreds of MB cost nothing to
        keep); its length is declared, as the providers do."""
        file_id = request.match_info["id"]
        batch = self.batches.get(file_id.removeprefix("file-"))
        self.calls[file_id]["file"] += 1
        if batch is None or batch.input_file in ("missing", "none"):
            return _error(404, f"No such File object: {file_id}", "invalid_request_error")
        if batch.input_file == "refused":
            return _error(403, "You do not have access to this file.", "invalid_request_error")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = batch.input_size()
        await response.prepare(request)
        part: list[bytes] = []
        try:
            for line in batch.input_lines():
                part.append(line)
                if len(part) >= 256:
                    await response.write(b"".join(part))
                    part = []
            await response.write(b"".join(part))
            await response.write_eof()
        except ConnectionError:  # the reader stopped (too large, or it had it all)
            pass
        return response

    async def _list(self, request: web.Request) -> web.Response:
        paged = self.kind.paging == "page"
        try:
            size = request.query.get("page_size" if paged else "limit", "100" if paged else "20")
            limit = min(max(int(size), 1), 100)
            first = int(request.query.get("page", "0")) * limit if paged else 0
        except ValueError:
            return _error(400, "limit, page and page_size are integers", "invalid_request_error")
        self.calls["(list)"]["list"] += 1
        if self.list_latency:
            await asyncio.sleep(self.list_latency)
        ordered = sorted(self.batches.values(), key=lambda b: (-b.created_at, b.id))
        now = self.clock()
        if paged:  # Mistral: page numbers and a total
            page = ordered[first : first + limit]
            data = [self._served(b, now) for b in page]
            return web.json_response({"object": "list", "data": data, "total": len(ordered)})
        if self.kind.paging == "none":  # every batch at once
            served = [self._served(b, now) for b in ordered]
            if self.kind.name == "together":  # a bare array
                return web.json_response(served)
            return web.json_response({"object": "list", "data": served})
        after = request.query.get(self.kind.after)
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": [self._served(b, now) for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(ordered) > limit,
            }
        )

    def _served(self, batch: SimBatch, now: float) -> dict[str, Any]:
        return outward(self.kind, batch.wire(now))

    def _count(self, batch_id: str, kind: str, host: str) -> None:
        self.calls[batch_id][kind] += 1
        self.log.append((epoch(), kind, batch_id, host))

    async def _calls(self, request: web.Request) -> web.Response:
        return web.json_response({k: dict(v) for k, v in self.calls.items()})

    async def _add_fault(self, request: web.Request) -> web.Response:
        self.faults.append(Fault(**await request.json()))
        return web.json_response({"faults": len(self.faults)})


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
