"""Webhook notifications: a JSON POST per event of the kinds a hook asks for, in the
hook's format (views/notices.py), sent by background workers with retries, so a slow or
dead receiver never slows a tick. URLs and secrets are never logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog

from watchdog.clock import epoch
from watchdog.core.config import Webhook
from watchdog.core.errors import ProviderError
from watchdog.core.events import Event
from watchdog.providers.http import HttpClient
from watchdog.views import notices

log = structlog.get_logger("watchdog.webhooks")
QUEUE_SIZE = 1000
WORKERS = 4
ATTEMPTS = 4
DRAIN_SECONDS = 5.0


def shown(url: str) -> str:
    """What of a webhook URL may be logged."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


class WebhookSender:
    """Queues messages for the configured hooks and delivers them in the background."""

    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        secrets: Sequence[str | None] = (),
        base_url: str | None = None,
        facts: Callable[[Event], Awaitable[dict[str, Any]]] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.hooks = list(hooks)
        self._secrets = list(secrets) or [None] * len(self.hooks)  # each hook's, in order
        self.base_url = base_url
        self._facts = facts  # the batch's model and money, read as a message goes out
        self.http = HttpClient(
            "webhooks",
            secrets=[hook.url for hook in self.hooks] + [s for s in self._secrets if s],
            max_retries=ATTEMPTS - 1,
            concurrency=WORKERS,
            sleep=sleep,
        )
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue(QUEUE_SIZE)
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
            for index, hook in enumerate(self.hooks):
                if event.kind not in hook.events:
                    continue
                try:
                    self._queue.put_nowait((index, event))
                    self._unsent[event.kind] += 1
                except asyncio.QueueFull:
                    log.warning(
                        "webhook_dropped", url=shown(hook.url), kind=event.kind, reason="queue full"
                    )

    async def _work(self) -> None:
        while True:
            index, event = await self._queue.get()
            try:
                await self._deliver(index, event)
            finally:
                self._unsent[event.kind] -= 1
                self._queue.task_done()

    async def _facts_of(self, index: int, event: Event) -> dict[str, Any]:
        """The batch's model and money for a slack or pagerduty message ({} when the
        database does not answer: the message goes without them)."""
        if self._facts is None or self.hooks[index].format == "generic":
            return {}
        try:
            return await self._facts(event)
        except Exception as exc:
            log.warning("webhook_facts_failed", kind=event.kind, error=type(exc).__name__)
            return {}

    def _body(
        self, index: int, event: Event, facts: dict[str, Any]
    ) -> tuple[bytes, dict[str, str]]:
        """The hook's message as the bytes sent, and its headers (a generic hook with a
        secret signs them: the timestamp and the HMAC over both)."""
        hook, secret = self.hooks[index], self._secrets[index]
        if hook.format != "generic":
            if hook.format == "slack":
                return _bytes(notices.slack(event, self.base_url, facts)), {}
            assert secret is not None  # the config requires the routing key
            return _bytes(notices.pagerduty(event, secret, self.base_url, facts)), {}
        body = _bytes(notices.generic(event, self.base_url))
        if secret is None:
            return body, {}
        stamp = str(int(epoch()))
        signed = notices.signature(secret, stamp, body)
        return body, {notices.TIMESTAMP_HEADER: stamp, notices.SIGNATURE_HEADER: signed}

    async def _deliver(self, index: int, event: Event) -> None:
        # At least once: a POST whose answer was lost is sent again (receivers see the
        # event's time and kind, or PagerDuty its dedup key, and can drop a duplicate).
        hook = self.hooks[index]
        body, headers = self._body(index, event, await self._facts_of(index, event))
        try:
            await self.http.request(
                "POST", hook.url, data=body, headers=headers,
                timeout=hook.timeout.total_seconds(),
            )  # fmt: skip
        except ProviderError as exc:
            log.warning("webhook_failed", url=shown(hook.url), kind=event.kind, error=str(exc))


def _bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()
