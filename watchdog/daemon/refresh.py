"""Step "refresh" of a tick: the batches' current state from their providers — one
GET each, or, when many of one provider are due, its list pages, handed on a chunk at
a time as they are read. The only step that reads from providers."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog

from watchdog.core.errors import PermanentError, ProviderError
from watchdog.core.models import BatchObject, BatchPage, InvalidBatchId, validate_batch_id, view_of
from watchdog.core.policies import Discovery
from watchdog.core.rows import Tracked
from watchdog.providers.client import ProviderClient

log = structlog.get_logger("watchdog.refresh")
Result = BatchObject | ProviderError
MIN_SHARE = 0.25  # of the listed batches that must be due for paging to go on
MAX_DISCOVERY_PAGES = 2000  # 200,000 batches in the look-back: a list that never ends stops


def _older(batch: BatchObject, than: datetime | None) -> bool:
    """Created before ``than``: the list (newest first) is past every due batch."""
    return than is not None and batch.created_at is not None and batch.created_at < than.timestamp()


T = TypeVar("T")
_END: Any = object()


async def read_ahead(source: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """The items of ``source``, the next one already being produced (its claim, its
    requests) while the caller works on this one. Closing this closes the source."""
    pending = asyncio.ensure_future(anext(source, _END))
    try:
        while (item := await pending) is not _END:
            pending = asyncio.ensure_future(anext(source, _END))
            yield item
    finally:
        pending.cancel()  # nothing when it is done; its outcome is collected either way
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
        await source.aclose()


class Prefetched:
    """List answers of one tick, each with when it was read: used once, and never for a
    batch polled after the page was read (something newer is known of it). ``new``:
    the ids discovery would start tracking (if they are not tracked yet)."""

    def __init__(
        self,
        found: dict[tuple[str, str], tuple[BatchObject, datetime]],
        new: list[str] | None = None,
    ) -> None:
        self._found = found
        self.new = new or []

    def keys(self) -> list[tuple[str, str]]:
        return list(self._found)

    def take(self, tracked: Tracked) -> BatchObject | None:
        found = self._found.pop(tracked.key, None)
        if found is None:
            return None
        answer, read_at = found
        fresh = tracked.last_polled_at is None or tracked.last_polled_at <= read_at
        return answer if fresh else None


@dataclass
class ListPass:
    """What one pass over a provider's list pages is for, and what it found.

    A bulk refresh keeps the ``due`` batches and stops once all were seen or the pages
    stop paying; a discovery pass keeps every batch it lists (the claim takes the due
    ones, the store the new ones) and reads on until it is past ``through``."""

    due: set[str]
    oldest_due: datetime | None = None  # the oldest due batch's creation
    discover: Discovery | None = None
    through: float | None = None  # discovery: read on until created before this
    newest: float | None = None  # found: the newest creation listed
    oldest: float | None = None  # found: the oldest creation listed
    listed: int = 0  # found: batches listed
    complete: bool = False  # found: the pass reached where it meant to
    # found: why the list could not be read to its end (a cursor that cycles, a page
    # repeated) — (reason, what was seen), or None
    broken: tuple[str, str] | None = None
    pages: int = 0  # found: list requests made

    def keeps(self, batch: BatchObject) -> bool:
        return self.discover is not None or batch.id in self.due

    def done(self, page: BatchPage, listed: int, seen: int) -> bool:
        """Whether to stop after this page (also set when the pass is complete)."""
        last = page.data[-1] if page.data else None
        if self.discover is not None:
            created = None if last is None else last.created_at
            reached = created is not None and self.through is not None and created < self.through
            self.complete = reached or not page.has_more
            return self.complete
        past = last is not None and _older(last, self.oldest_due)
        unpaid = listed >= 200 and seen < MIN_SHARE * listed
        self.complete = not page.has_more or past or seen >= len(self.due)
        return self.complete or unpaid


def depth(
    floor: float, new_from: float | None, running: list[float], density: float | None, now: float
) -> float:
    """How far down its list (a creation time to read past) a discovery pass reads: at
    least past what is new since the last complete pass (``new_from``), and down to
    the running batches only as far as reading pages costs fewer requests than one GET
    for each batch left below — their places estimated from the list's ``density``
    (batches listed per second of creation, as the last complete pass saw it). Never
    past the look-back (``floor``). Pure."""
    if new_from is None:  # no complete pass yet: the whole look-back
        return floor
    if density is None or density <= 0:  # nothing to estimate with: down to them all
        return max(floor, min([new_from, *running]))
    deepest = sorted(running, reverse=True)  # newest first, as the list

    def pages(created: float) -> int:
        return math.ceil(max(now - created, 0.0) * density / 100) + 1

    fresh = pages(new_from)
    best, through = fresh + len(deepest), new_from  # new pages, the rest one GET each
    for covered, created in enumerate(deepest, start=1):
        cost = max(pages(created), fresh) + len(deepest) - covered
        if cost < best:
            best, through = cost, min(new_from, created)
    return max(floor, through)


class _Walk:
    """Where a pass is in a list, and what it has seen of it: a cursor met twice in one
    pass is a cycle, a page the same as the one before is a list that repeats — either
    would read the same pages until the bound (or stop quietly short of the end)."""

    def __init__(self) -> None:
        self.after: str | None = None
        self._cursors: set[str] = set()
        self._last: tuple[str, ...] | None = None

    def repeated(self, page: BatchPage) -> tuple[str, str] | None:
        ids = tuple(b.id for b in page.data) + tuple(page.malformed)
        if ids and ids == self._last:
            return ("page_repeated", f"the page after {self.after!r} repeats the one before")
        self._last = ids
        return None

    def step(self, page: BatchPage) -> tuple[str, str] | None:
        """Move on to the next page; why not, when the list says there is more."""
        cursor = page.cursor
        if cursor is None or cursor == self.after:
            return ("cursor_stuck", f"has_more, but the cursor stays at {self.after!r}")
        if cursor in self._cursors:
            return ("cursor_cycles", f"cursor {cursor!r} came back within one pass")
        self._cursors.add(cursor)
        self.after = cursor
        return None


class Refresher:
    """Reads batches from the providers' clients."""

    def __init__(
        self,
        clients: Mapping[str, ProviderClient],
        clock: Callable[[], datetime],
        bulk_threshold: int = 200,
    ) -> None:
        self.clients = clients
        self.clock = clock
        self.bulk_threshold = bulk_threshold

    def bulk(
        self, due: Mapping[str, tuple[set[str], datetime | None]]
    ) -> dict[str, tuple[set[str], datetime | None]]:
        """The providers whose due batches are worth reading from the list pages (at
        least ``bulk_threshold`` of them): the others are fetched one GET each."""
        if not self.bulk_threshold:
            return {}
        return {
            provider: found
            for provider, found in due.items()
            if provider in self.clients and len(found[0]) >= self.bulk_threshold
        }

    async def pages(self, provider: str, plan: ListPass, chunk: int) -> AsyncIterator[Prefetched]:
        """The batches ``plan`` keeps from the provider's list pages (newest first, 100 a
        request), handed on ``chunk`` at a time as they are read, so that memory holds
        one chunk, not the list. A provider whose ``has_more`` never ends, or whose
        cursor does not move, is cut short."""
        client = self.clients[provider]
        kept: dict[tuple[str, str], tuple[BatchObject, datetime]] = {}
        new: list[str] = []
        walk, listed, seen = _Walk(), 0, 0
        bound = MAX_DISCOVERY_PAGES if plan.discover else len(plan.due) // 100 + 20
        for _ in range(bound):
            try:
                page = await client.list(limit=100, after=walk.after)
            except (ProviderError, InvalidBatchId) as exc:
                log.warning("list_pass_stopped", provider=provider, error=str(exc)[:200])
                break
            plan.pages += 1
            plan.broken = walk.repeated(page)
            if plan.broken is not None:
                break
            if page.skipped:  # those batches are fetched singly, like any the pages miss
                log.info("list_items_skipped", provider=provider, skipped=page.skipped)
            read_at, listed = self.clock(), listed + len(page.data)
            for batch in page.data:
                seen += self._keep(provider, batch, plan, read_at, kept, new)
            new += [b for b in page.malformed if plan.discover is not None]
            if len(kept) >= chunk:
                yield Prefetched(kept, new)
                kept, new = {}, []
            if plan.done(page, listed, seen):
                break
            plan.broken = walk.step(page)
            if plan.broken is not None:
                break
        else:
            plan.broken = ("too_long", f"{bound} pages and more to come")
        if kept or new:
            yield Prefetched(kept, new)
        log.debug("list_pass", provider=provider, due=len(plan.due), found=seen, listed=listed)

    def _keep(
        self,
        provider: str,
        batch: BatchObject,
        plan: ListPass,
        read_at: datetime,
        kept: dict[tuple[str, str], tuple[BatchObject, datetime]],
        new: list[str],
    ) -> int:
        """Keep one listed batch if the pass wants it; 1 when it was a due one."""
        plan.listed += 1
        if batch.created_at is not None:
            plan.newest = max(plan.newest or batch.created_at, batch.created_at)
            plan.oldest = min(plan.oldest or batch.created_at, batch.created_at)
        if not plan.keeps(batch) or (provider, batch.id) in kept:
            return 0
        kept[(provider, batch.id)] = (batch, read_at)
        if plan.discover is not None and plan.discover.selects(view_of(provider, batch), read_at):
            new.append(batch.id)
        return int(batch.id in plan.due)

    async def fetch_all(self, claimed: list[Tracked], prefetched: Prefetched) -> list[Result]:
        """Each claimed batch's answer, in order (the list's when it may be used)."""
        return await asyncio.gather(*(self._one(t, prefetched) for t in claimed))

    async def _one(self, tracked: Tracked, prefetched: Prefetched) -> Result:
        return prefetched.take(tracked) or await self.get(tracked)

    async def get(self, tracked: Tracked) -> Result:
        """``GET`` one batch; any failure, a bug included, is that batch's alone."""
        provider, batch_id = tracked.key
        client = self.clients.get(provider)
        if client is None:
            return PermanentError(f"provider {provider!r} is not configured")
        try:
            validate_batch_id(batch_id)
        except InvalidBatchId as exc:
            return PermanentError(str(exc))
        try:
            return await client.get(batch_id)
        except ProviderError as exc:
            return exc
        except Exception as exc:  # a bug must not cost the other batches their tick
            log.exception("poll_crashed", batch_id=batch_id, provider=provider)
            return PermanentError(f"internal error: {type(exc).__name__}")
