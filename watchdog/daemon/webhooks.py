"""Webhook notifications: a JSON POST per event of the kinds a hook asks for (a
Slack-compatible ``text`` plus the structured event), sent by background workers with
retries (the HTTP base's, Retry-After included), so a slow or dead receiver never slows
a tick. URLs, which often carry a token, are logged by scheme and host only."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog

from watchdog.core.config import Webhook
from watchdog.core.errors import ProviderError
from watchdog.core.events import Event
from watchdog.providers.http import HttpClient

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
        self.http = HttpClient(
            "webhooks",
            secrets=[hook.url for hook in self.hooks],
            max_retries=ATTEMPTS - 1,
            concurrency=WORKERS,
            sleep=sleep,
        )
        self._queue: asyncio.Queue[tuple[Webhook, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        self._workers: list[asyncio.Task[None]] = []
        self._unsent: Counter[str] = Counter()  # by event kind, until delivered or given up

    async def __aenter__(self) -> WebhookSender:
        await self.http.__aenter__()
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
        await self.http.__aexit__(*exc_info)

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
        # At least once: a POST whose answer was lost is sent again (receivers see the
        # event's time and kind and can drop a duplicate).
        try:
            await self.http.request(
                "POST", hook.url, json_body=body, timeout=hook.timeout.total_seconds()
            )
        except ProviderError as exc:
            log.warning(
                "webhook_failed", url=shown(hook.url), kind=body["event"]["kind"], error=str(exc)
            )
