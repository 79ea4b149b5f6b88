"""Random faults for the simulator, the way real providers and networks fail: 429s
(seconds, HTTP date, milliseconds), 5xx, hung and reset connections, truncated bodies,
HTML with 200, malformed JSON, unknown statuses, absurd timestamps, a list that never
ends. Faults before the handler leave the state alone; faults after it (the request
was acted on, the answer is lost or garbled) are the dangerous ones for a cancel."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from watchdog.clock import utcnow

BEFORE = ("429_seconds", "429_date", "429_ms", "500", "502", "503", "504", "hang", "reset", "html")
AFTER = (
    "truncated",
    "missing_field",
    "wrong_type",
    "unknown_status",
    "odd_timestamps",
    "endless_list",
)
FAULTS = BEFORE + AFTER
ROUTES = ("get", "cancel", "list", "create")


def route_of(request: web.Request) -> str:
    if request.method == "POST":
        return "cancel" if request.path.endswith("/cancel") else "create"
    return "list" if request.path.rstrip("/").endswith("/batches") else "get"


@dataclass(slots=True)
class Chaos:
    """Each request to one of ``routes`` fails with probability ``rate``, in one of ``kinds``."""

    rate: float = 0.1
    kinds: tuple[str, ...] = FAULTS
    routes: tuple[str, ...] = ROUTES
    seed: int | None = None
    hang_seconds: float = 30.0
    counts: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; valid: {', '.join(FAULTS)}")
        if set(self.routes) - set(ROUTES):
            raise ValueError(f"unknown routes {self.routes}; valid: {', '.join(ROUTES)}")
        self._rng = random.Random(self.seed)

    def pick(self, request: web.Request) -> str | None:
        if route_of(request) not in self.routes or self._rng.random() >= self.rate:
            return None
        kind = self._rng.choice(self.kinds)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return kind

    async def before(self, kind: str, request: web.Request) -> web.StreamResponse:
        """A failure in place of the handler."""
        if kind.startswith("429"):
            return web.json_response(
                {"error": {"message": "Rate limit reached"}},
                status=429,
                headers=_retry_headers(kind),
            )
        if kind.isdigit():
            return web.json_response({"error": {"message": "upstream trouble"}}, status=int(kind))
        if kind == "hang":
            await asyncio.sleep(self.hang_seconds)
        if kind in ("hang", "reset") and request.transport is not None:
            request.transport.abort()
        if kind == "html":
            return web.Response(
                text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        return web.Response(status=500)

    async def after(
        self, kind: str, request: web.Request, response: web.Response
    ) -> web.StreamResponse:
        """The handler acted; its answer is garbled on the way back."""
        body = response.body if isinstance(response.body, bytes) else b""
        if kind == "truncated":
            stream = web.StreamResponse(
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))}
            )
            await stream.prepare(request)
            await stream.write(body[: len(body) // 2])
            if request.transport is not None:
                request.transport.abort()
            return stream
        data = json.loads(body)
        for item in data.get("data", [data]) if isinstance(data, dict) else []:
            _garble(kind, item, self._rng)
        if kind == "endless_list" and "data" in data:
            data["has_more"] = True
        return web.json_response(data, status=response.status)


def _garble(kind: str, item: dict[str, Any], rng: random.Random) -> None:
    if kind == "missing_field":
        item.pop("status", None)
    elif kind == "wrong_type":
        item["request_counts"] = "many"
    elif kind == "unknown_status":
        item["status"] = "queued_for_gpu"
    elif kind == "odd_timestamps":
        item["created_at"] = 0 if rng.random() < 0.5 else 32_503_680_000


def _retry_headers(kind: str) -> dict[str, str]:
    if kind == "429_ms":
        return {"retry-after-ms": "200"}
    if kind == "429_date":
        when = utcnow() + timedelta(seconds=1)
        return {"Retry-After": format_datetime(when, usegmt=True)}
    return {"Retry-After": "1"}
