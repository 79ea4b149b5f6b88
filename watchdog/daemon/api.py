"""The JSON API under /api/v1/ (reads): batches a page at a time, one batch with its
events and its explanation, the audit log, the budgets, and the OpenAPI document that
describes them. Every route asks ``Access`` who the caller is first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from watchdog.core.durations import parse_duration, parse_time
from watchdog.core.events import Kind
from watchdog.core.models import validate_batch_id
from watchdog.core.rows import Listed
from watchdog.daemon import gate
from watchdog.daemon.access import Access
from watchdog.daemon.engine import Engine
from watchdog.settings import Settings
from watchdog.storage.journal import EventFilter
from watchdog.storage.store import Store
from watchdog.views.explain import explained
from watchdog.views.openapi import document
from watchdog.views.text import batch_json, event_json

PREFIX = "/api/v1"
log = structlog.get_logger("watchdog.api")
EXAMINE = 1000  # batches one page request reads at most, whatever its filters
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(web.HTTPBadRequest):
    def __init__(self, why: str) -> None:
        super().__init__(text=_dumps({"error": why}), content_type="application/json")


class Api:
    """The routes; the store, the engine (its budgets' book) and the settings (for an
    explanation) are the daemon's own."""

    def __init__(self, store: Store, engine: Engine, settings: Settings, access: Access) -> None:
        self.store, self.engine, self.settings, self.access = store, engine, settings, access

    def add_routes(self, app: web.Application) -> None:
        reads: dict[str, Handler] = {
            "/openapi.json": self._openapi,
            "/batches": self._batches,
            "/batches/{provider}/{batch_id}": self._batch,
            "/events": self._events,
            "/budgets": self._budgets,
        }
        for path, handler in reads.items():
            app.router.add_get(PREFIX + path, self._reading(handler))

    def _reading(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.access.caller(request, write=False)
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:  # the database away, or a bug: one line, never a trace
                log.warning("api_failed", path=request.path, error=type(exc).__name__)
                body = _dumps({"error": f"unavailable: {type(exc).__name__}"})
                return web.Response(status=503, text=body, content_type="application/json")

        return guarded

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document(), dumps=_dumps)

    async def _batches(self, request: web.Request) -> web.Response:
        """A page of batches in key order; ``next`` continues after the last one read
        (a page may hold fewer than ``limit`` when filters skip rows: at most EXAMINE
        rows are read a request)."""
        q = request.query
        limit = _int(q.get("limit"), "limit", 100, 500)
        after = _key(q["after"]) if "after" in q else None
        label = _label(q["label"]) if "label" in q else None
        read = await self.store.reads.batches_after(after, EXAMINE, q.get("provider"))
        found: list[Listed] = []
        for listed in read:
            if _wanted(listed, q.get("status"), label):
                found.append(listed)
            if len(found) == limit:
                break
        last = found[-1] if len(found) == limit else (read[-1] if len(read) == EXAMINE else None)
        nxt = None if last is None else "/".join(last.tracked.key)
        return _json({"batches": [batch_json(b) for b in found], "next": nxt})

    async def _batch(self, request: web.Request) -> web.Response:
        """One batch: its row, its events, and what its next tick will do."""
        provider, batch_id = request.match_info["provider"], request.match_info["batch_id"]
        _checked_id(batch_id)
        listed = await self.store.reads.one(provider, batch_id)
        if listed is None:
            body = _dumps({"error": f"{provider}/{batch_id} is not tracked"})
            raise web.HTTPNotFound(text=body, content_type="application/json")
        tracked, next_poll, now = listed.tracked, listed.next_poll_at, self.engine.clock()
        wanted = EventFilter(batch_id=batch_id, provider=provider)
        events = [event_json(e) async for e in self.store.journal.stream_events(wanted)]
        groups = [a for a in self.engine.budgeting.book.last if _member(a, tracked.key)]
        tripped = await gate.status(self.store) is not None
        why = explained(self.settings, tracked, next_poll, groups, tripped, now)
        return _json({"batch": batch_json(listed), "events": events, "explanation": why.as_dict()})

    async def _events(self, request: web.Request) -> web.Response:
        """The audit log, oldest first, filtered as ``events`` filters it; ``limit`` the
        newest N (at most 1000)."""
        q = request.query
        kinds = tuple(q.getall("kind", []))
        if unknown := sorted(set(kinds) - {str(k) for k in Kind}):
            raise BadRequest(f"unknown kind {unknown[0]!r}; valid: {', '.join(map(str, Kind))}")
        if "batch_id" in q:
            _checked_id(q["batch_id"])
        wanted = EventFilter(
            batch_id=q.get("batch_id"),
            provider=q.get("provider"),
            kinds=kinds,
            since=_when(q.get("since"), "since", self.engine.clock()),
            until=_when(q.get("until"), "until", self.engine.clock()),
            limit=_int(q.get("limit"), "limit", 100, 1000),
        )
        events = [event_json(e) async for e in self.store.journal.stream_events(wanted)]
        return _json({"events": events})

    async def _budgets(self, request: web.Request) -> web.Response:
        """Each budget group as the last tick assessed it."""
        found = [a.figures().as_dict() for a in self.engine.budgeting.book.last]
        return _json({"budgets": found})


def _wanted(listed: Listed, status: str | None, label: tuple[str, str] | None) -> bool:
    if status is not None and listed.tracked.view.status != status:
        return False
    return label is None or (listed.labels or {}).get(label[0]) == label[1]


def _member(one: Any, key: tuple[str, str]) -> bool:
    return any((m.view.provider, m.view.batch_id) == key for m in one.members)


def _checked_id(batch_id: str) -> str:
    try:
        return validate_batch_id(batch_id)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _key(text: str) -> tuple[str, str]:
    provider, _, batch_id = text.partition("/")
    if not provider or not batch_id:
        raise BadRequest("after: give PROVIDER/BATCH_ID (a page's next)")
    return provider, batch_id


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BadRequest("label: give KEY=VALUE")
    return key, value


def _int(text: str | None, name: str, default: int, most: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise BadRequest(f"{name}: a whole number from 1 to {most}")
    return int(text)


def _when(text: str | None, name: str, now: datetime) -> datetime | None:
    """A duration ago (``7d``) or an ISO 8601 time (UTC unless it says)."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise BadRequest(f"{name}: neither a duration (7d, 12h) nor an ISO 8601 time") from None


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _json(value: Any) -> web.Response:
    return web.json_response(value, dumps=_dumps)
