"""The JSON API under /api/v1/ (reads): batches a page at a time, one batch with its
events and its explanation, the audit log, the budgets, and the OpenAPI document that
describes them. Every route asks ``Access`` who the caller is first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from watchdog.core.durations import moment, parse_duration
from watchdog.core.events import Kind
from watchdog.core.models import validate_batch_id
from watchdog.core.rows import Listed
from watchdog.daemon import gate
from watchdog.daemon.access import Access
from watchdog.daemon.engine import Engine
from watchdog.settings import Settings
from watchdog.storage.journal import EventFilter
from watchdog.storage.store import Store
from watchdog.views.batchpage import render_batch
from watchdog.views.explain import explained
from watchdog.views.openapi import document
from watchdog.views.text import batch_json, event_json

PREFIX = "/api/v1"
log = structlog.get_logger("watchdog.api")
EXAMINE = 1000  # batches one page request reads at most, whatever its filters
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answer = tuple[int, dict[str, Any]]
Body = dict[str, Any]  # a write's JSON body
Said = dict[str, str]  # who asked and why: the write's actor and reason
Write = Callable[[web.Request, Body, Said], Awaitable[Answer]]


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
        for path, write in self.writes().items():
            app.router.add_post(PREFIX + path, self._writing(write))

    def writes(self) -> dict[str, Write]:
        """Every write by its path under the prefix (the page's forms use the same)."""
        return {
            "/batches": self._track,
            "/batches/{provider}/{batch_id}/untrack": self._untrack,
            "/batches/{provider}/{batch_id}/exempt": self._exempt,
            "/batches/{provider}/{batch_id}/unexempt": self._unexempt,
            "/batches/{provider}/{batch_id}/cancel": self._cancel,
            "/resume": self._resume,
        }

    def _writing(self, write: Write) -> Handler:
        """An operator's write: the caller, a JSON body with a ``reason``; the actor and
        the reason go into the write's event, and a log line says who did what."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            caller = self.access.caller(request, write=True)
            body = await _body(request)
            reason = body.get("reason")
            if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
                raise BadRequest("reason: say why, in at most 500 characters")
            said = {"actor": caller.name, "reason": reason.strip()}
            status, answer = await write(request, body, said)
            log.info("api_write", path=request.path, status=status, **said)
            return web.json_response(answer, status=status, dumps=_dumps)

        return self._reading(guarded)

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
        groups = [a for a in self.engine.budgeting.book.last if a.counts(tracked.key)]
        tripped = await gate.status(self.store) is not None
        why = explained(self.settings, tracked, next_poll, groups, tripped, now)
        return _json({"batch": batch_json(listed), "events": events, "explanation": why.as_dict()})

    async def batch_html(
        self, provider: str, batch_id: str, forms: Callable[[bool], str] | None = None
    ) -> str | None:
        """The batch's own page, or None when it is not tracked; ``forms(exempt)`` gives
        the viewer's forms (an operator's session has them)."""
        _checked_id(batch_id)
        listed = await self.store.reads.one(provider, batch_id)
        if listed is None:
            return None
        tracked, now = listed.tracked, self.engine.clock()
        wanted = EventFilter(batch_id=batch_id, provider=provider, limit=100)
        events = [e async for e in self.store.journal.stream_events(wanted)]
        groups = [a for a in self.engine.budgeting.book.last if a.counts(tracked.key)]
        tripped = await gate.status(self.store) is not None
        why = explained(self.settings, tracked, listed.next_poll_at, groups, tripped, now)
        samples = await self.store.journal.samples_of(provider, batch_id)
        exempt = tracked.exempt_until is not None and tracked.exempt_until > now
        actions = "" if forms is None else forms(exempt)
        return render_batch(listed, why, events, samples, self.settings.pricing, actions)

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

    async def _track(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        provider, batch_id = self._provider(body.get("provider")), _checked_id(body.get("batch_id"))
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise BadRequest("labels: an object of text values")
        now = self.engine.clock()
        added = await self.store.tracking.track(provider, batch_id, labels, now, said)
        return (201 if added else 200), {
            "tracked": added,
            "provider": provider,
            "batch_id": batch_id,
        }

    async def _untrack(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        provider, batch_id = self._batch_key(request)
        done = await self.store.tracking.untrack(batch_id, provider, self.engine.clock(), said)
        return self._applied(done, provider, batch_id, "untracked")

    async def _exempt(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        provider, batch_id = self._batch_key(request)
        try:
            span = parse_duration(body.get("for"))
        except ValueError as exc:
            raise BadRequest(f"for: {exc}") from None
        now = self.engine.clock()
        until = now + span
        done = await self.store.tracking.exempt(
            batch_id, provider, until, said["reason"], now, {"actor": said["actor"]}
        )
        return self._applied(done, provider, batch_id, "exempted")

    async def _unexempt(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        provider, batch_id = self._batch_key(request)
        done = await self.store.tracking.exempt(
            batch_id, provider, None, None, self.engine.clock(), said
        )
        return self._applied(done, provider, batch_id, "unexempted")

    async def _cancel(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        """Queued for the next tick, which plans it as a policy's cancel (dry run,
        exemptions, the limits, once only): 202, and its events say what came of it."""
        provider, batch_id = self._batch_key(request)
        if await self.store.reads.one(provider, batch_id) is None:
            return 404, {"error": f"{provider}/{batch_id} is not tracked"}
        await self.store.coord.ask_cancel((provider, batch_id), said, self.engine.clock())
        note = "planned at the next tick as a policy's cancel (dry run, exemptions, limits)"
        return 202, {"queued": True, "provider": provider, "batch_id": batch_id, "note": note}

    async def _resume(
        self, request: web.Request, body: dict[str, Any], said: dict[str, str]
    ) -> Answer:
        resumed = await gate.resume(self.store, self.engine.clock(), by="operator", said=said)
        return 200, {"resumed": resumed is not None}

    def _batch_key(self, request: web.Request) -> tuple[str, str]:
        provider = self._provider(request.match_info["provider"])
        return provider, _checked_id(request.match_info["batch_id"])

    def _provider(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.settings.providers:
            known = ", ".join(sorted(self.settings.providers))
            raise BadRequest(f"provider: one of the configured ones ({known})")
        return name

    @staticmethod
    def _applied(done: list[str], provider: str, batch_id: str, what: str) -> Answer:
        if not done:
            return 404, {"error": f"{provider}/{batch_id} is not tracked"}
        return 200, {what: True, "provider": provider, "batch_id": batch_id}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _wanted(listed: Listed, status: str | None, label: tuple[str, str] | None) -> bool:
    if status is not None and listed.tracked.view.status != status:
        return False
    return label is None or (listed.labels or {}).get(label[0]) == label[1]


def _checked_id(batch_id: Any) -> str:
    if not isinstance(batch_id, str):
        raise BadRequest("batch_id: text")
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
        return moment(text, now)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


def _json(value: Any) -> web.Response:
    return web.json_response(value, dumps=_dumps)
