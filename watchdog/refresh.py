"""Step "refresh" of a tick: the batches' current state from their providers — one
GET each, or, when many of one provider are due, pages of its list read once at the
start of the tick. The only step that reads from providers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from watchdog.errors import PermanentError, ProviderError
from watchdog.models import BatchObject, InvalidBatchId, validate_batch_id
from watchdog.providers import ProviderClient
from watchdog.rows import Tracked

log = structlog.get_logger("watchdog.refresh")
Result = BatchObject | ProviderError
MIN_SHARE = 0.25  # of the listed batches that must be due for paging to go on


def _older(batch: BatchObject, than: datetime | None) -> bool:
    """Created before ``than``: the list (newest first) is past every due batch."""
    return than is not None and batch.created_at is not None and batch.created_at < than.timestamp()


class Prefetched:
    """List answers of one tick, each with when it was read: used once, and never for a
    batch polled after the page was read (something newer is known of it)."""

    def __init__(self, found: dict[tuple[str, str], tuple[BatchObject, datetime]]) -> None:
        self._found = found

    def __len__(self) -> int:
        return len(self._found)

    def take(self, tracked: Tracked) -> BatchObject | None:
        found = self._found.pop(tracked.key, None)
        if found is None:
            return None
        answer, read_at = found
        fresh = tracked.last_polled_at is None or tracked.last_polled_at <= read_at
        return answer if fresh else None


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

    async def prefetch(self, due: Mapping[str, tuple[set[str], datetime | None]]) -> Prefetched:
        """For each provider with at least ``bulk_threshold`` batches due (their ids, the
        oldest one's creation), the due ones' answers from its list pages, 100 a
        request, instead of one GET each; the ones the pages miss are fetched singly."""
        found: dict[tuple[str, str], tuple[BatchObject, datetime]] = {}
        for provider, (ids, oldest) in due.items():
            client = self.clients.get(provider)
            if client is None or not self.bulk_threshold or len(ids) < self.bulk_threshold:
                continue
            read_at = self.clock()
            listed = await self._list_due(client, ids, oldest)
            found.update({(provider, b.id): (b, read_at) for b in listed})
            log.debug("bulk_refreshed", provider=provider, due=len(ids), found=len(listed))
        return Prefetched(found)

    async def _list_due(
        self, client: ProviderClient, due: set[str], oldest: datetime | None
    ) -> list[BatchObject]:
        """Pages newest first, keeping only the due batches, until every due one was
        seen, the list is past the oldest due batch's creation, or the pages stop paying
        (less than MIN_SHARE of what they list is due: the rest is cheaper singly). A
        provider whose ``has_more`` never ends, or whose cursor does not move, is cut
        short."""
        kept: dict[str, BatchObject] = {}
        after, listed = None, 0
        for _ in range(len(due) // 100 + 20):
            try:
                page = await client.list(limit=100, after=after)
            except (ProviderError, InvalidBatchId) as exc:
                log.warning("bulk_refresh_stopped", provider=client.name, error=str(exc)[:200])
                break
            if page.skipped:  # those batches are fetched singly, like any the pages miss
                log.info("list_items_skipped", provider=client.name, skipped=page.skipped)
            listed += len(page.data)
            kept.update((b.id, b) for b in page.data if b.id in due)
            moved = page.cursor is not None and page.cursor != after
            past = bool(page.data) and _older(page.data[-1], oldest)
            unpaid = listed >= 200 and len(kept) < MIN_SHARE * listed
            if not moved or not page.has_more or past or unpaid or len(kept) == len(due):
                break
            after = page.cursor
        return list(kept.values())

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
