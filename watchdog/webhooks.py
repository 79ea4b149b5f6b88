"""Webhook notifications: a JSON POST per event of the kinds a hook asks for (a
Slack-compatible ``text`` plus the structured event), sent by background workers with
retries, so a slow or dead receiver never slows a tick. URLs, which often carry a
token, are logged by scheme and host only."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from watchdog import logs
from watchdog.providers import USER_AGENT, backoff
from watchdog.settings import Webhook
from watchdog.store import Event

log = structlog.get_logger("watchdog.webhooks")
QUEUE_SIZE = 1000
WORKERS = 4
ATTEMPTS = 4
DRAIN_SECONDS = 5.0


def shown(url: str) -> str:
    """What of a webhook URL may be logged."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


def message(event: Event) -> dict[str, Any]:
    """The JSON body: Slack's ``text`` and the event as the audit log has it."""
    where = f"{event.provider}/{event.batch_id}" if event.batch_id else "the daemon"
    change = ""
    if event.from_status or event.to_status:
        change = f" ({event.from_status or '-'} → {event.to_status or '-'})"
    policy = f" by policy {event.policy}" if event.policy else ""
    return {
        "text": f"batch-watchdog: {event.kind} on {where}{policy}{change}",
        "event": {
            "at": event.at.isoformat(),
            "kind": event.kind,
            "provider": event.provider,
            "batch_id": event.batch_id,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "policy": event.policy,
            "detail": dict(event.detail) if event.detail else None,
        },
    }


class WebhookSender:
    """Queues messages for the configured hooks and delivers them in the background."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.hooks = list(hooks)
        self._sleep = sleep
        self._queue: asyncio.Queue[tuple[Webhook, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._unsent: Counter[str] = Counter()  # by event kind, until delivered or given up
        for hook in self.hooks:
            logs.add_secret(hook.url)

    async def __aenter__(self) -> WebhookSender:
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        self._workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(TimeoutError):  # give queued messages a moment, no more
            await asyncio.wait_for(self._queue.join(), timeout=DRAIN_SECONDS)
        unsent = +self._unsent
        if unsent:  # queued or being sent: say what is lost
            log.warning(
                "webhooks_dropped",
                messages=sum(unsent.values()),
                kinds=dict(sorted(unsent.items())),
                reason=f"shutting down; not delivered within {DRAIN_SECONDS:g}s",
            )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def submit(self, events: Sequence[Event]) -> None:
        """Queue a message per event and hook that wants it; never waits."""
        for event in events:
            for hook in self.hooks:
                if event.kind not in hook.events:
                    continue
                try:
                    self._queue.put_nowait((hook, message(event)))
                    self._unsent[event.kind] += 1
                except asyncio.QueueFull:
                    log.warning(
                        "webhook_dropped", url=shown(hook.url), kind=event.kind, reason="queue full"
                    )

    async def _work(self) -> None:
        while True:
            hook, body = await self._queue.get()
            try:
                await self._deliver(hook, body)
            finally:
                self._unsent[body["event"]["kind"]] -= 1
                self._queue.task_done()

    async def _deliver(self, hook: Webhook, body: dict[str, Any]) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=hook.timeout.total_seconds())
        problem = ""
        for attempt in range(ATTEMPTS):
            try:
                async with self._session.post(hook.url, json=body, timeout=timeout) as resp:
                    if resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if attempt + 1 < ATTEMPTS:
                await self._sleep(backoff(attempt + 1))
        log.warning(
            "webhook_failed", url=shown(hook.url), kind=body["event"]["kind"], error=problem
        )
