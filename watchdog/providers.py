"""The only code that speaks HTTP: an aiohttp client per OpenAI-compatible provider
(get, cancel, list), with timeouts, bounded jittered retries that honour
Retry-After, and errors split into temporary and permanent. Keys never leave here."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, SecretStr, ValidationError

from watchdog.models import BatchObject, BatchPage, read_page, validate_batch_id

SNIPPET = 200
MAX_BODY = 16 * 1024 * 1024  # an answer larger than this fails its call, unread
MAX_KEY = 512  # no API key is longer: scrubbing looks this far past a cut
MAX_SERVER_DELAY = 30.0  # a longer Retry-After is left to the next tick
USER_AGENT = "batch-watchdog/0.1"
Model = TypeVar("Model", bound=BaseModel)


class ProviderError(Exception):
    """A failed call; ``status`` is the HTTP status when there was one."""

    temporary = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TemporaryError(ProviderError):
    """Worth retrying after a delay: network trouble, timeouts, 408, 429, 5xx."""

    temporary = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        # True when the provider certainly did not act on the request (refused connection,
        # 429): only then may a non-idempotent request such as a cancel be sent again.
        self.unsent = unsent


class Breaker:
    """A per-provider circuit breaker: after ``threshold`` failed calls in a row it opens
    for a jittered, doubling delay (up to ``cap``); then one call probes; success closes it.
    ``changes`` collects "unavailable" / "recovered" for the engine to record."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        base: float = 5.0,
        cap: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.threshold, self.base, self.cap = threshold, base, cap
        self._clock, self._rng = clock, rng
        self.failures = 0
        self.opened = 0  # times opened in a row: the backoff's exponent
        self.open_until: float | None = None
        self.changes: list[str] = []
        self._probing = False

    @property
    def available(self) -> bool:
        return self.open_until is None

    def allow(self) -> bool:
        """False while open; after the delay, one probe at a time goes through."""
        if self.open_until is None:
            return True
        if self._probing or self._clock() < self.open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        if self.open_until is not None:
            self.changes.append("recovered")
        self.failures, self.opened, self.open_until, self._probing = 0, 0, None, False

    def failure(self) -> None:
        if self.open_until is not None and not self._probing:
            return  # calls already in flight when it opened: no news
        self.failures += 1
        if self.open_until is None and self.failures < self.threshold:
            return
        if self.open_until is None:
            self.changes.append("unavailable")
        delay = min(self.base * 2**self.opened, self.cap) * (1 - 0.25 * self._rng())
        self.opened += 1
        self.open_until = self._clock() + delay
        self._probing = False


class PermanentError(ProviderError):
    """Retrying will not help: 4xx, or a body that is not what the API promises."""


class NotFound(PermanentError):
    """404: the provider does not know this batch (any more)."""


class CancelRefused(PermanentError):
    """400/409 on a cancel: the batch is already terminal. Refresh; never retry."""


def retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The body, or a PermanentError once it passes MAX_BODY (read no further)."""
    declared = resp.content_length
    if declared is not None and declared > MAX_BODY:
        raise PermanentError(f"answer of {declared} bytes is over the {MAX_BODY} byte limit")
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise PermanentError(f"answer is over the {MAX_BODY} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """OpenAI-SDK style: 0.5 s doubling to 8 s, minus up to 25 % jitter."""
    return float(min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * rng()))


class ProviderClient:
    """One provider's Batch API over one long-lived aiohttp session."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: SecretStr | None,
        timeout: float = 30.0,
        max_retries: int = 2,
        concurrency: int = 16,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._max_retries = max_retries
        self._concurrency = concurrency
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self.breaker = Breaker()
        # The provider's clock minus ours (seconds), from the last answer's Date header:
        # a host clock stepped away from the world's must not drive age-based cancels.
        self.clock_offset: float | None = None

    def __repr__(self) -> str:
        return f"ProviderClient({self.name!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> ProviderClient:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300),
            raise_for_status=False,
        )
        self._slots = asyncio.Semaphore(self._concurrency)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, batch_id: str) -> BatchObject:
        """``GET /batches/{id}``."""
        body = await self._call("GET", self._batch_url(batch_id))
        return self._batch(body, batch_id)

    async def cancel(self, batch_id: str) -> BatchObject:
        """``POST /batches/{id}/cancel``; CancelRefused when the batch is already terminal.
        Sent again only when the provider certainly did not act on it: a cancel whose
        answer was lost is settled from the batch's state on the next poll instead."""
        try:
            url = self._batch_url(batch_id) + "/cancel"
            body = await self._call("POST", url, idempotent=False)
        except PermanentError as exc:
            if exc.status in (400, 409):
                raise CancelRefused(str(exc), status=exc.status) from None
            raise
        return self._batch(body, batch_id)

    async def list(self, *, limit: int = 100, after: str | None = None) -> BatchPage:
        """One page of ``GET /batches`` (newest first, cursor = last id)."""
        params = {"limit": str(max(1, min(limit, 100)))}
        if after is not None:
            params["after"] = validate_batch_id(after)
        body = await self._call("GET", f"{self.base_url}/batches", params)
        return self._parse(read_page, body)

    def _batch_url(self, batch_id: str) -> str:
        return f"{self.base_url}/batches/{validate_batch_id(batch_id)}"

    def _batch(self, body: bytes, batch_id: str) -> BatchObject:
        batch = self._parse(BatchObject.model_validate_json, body)
        if batch.id != batch_id:
            raise PermanentError(f"answer is for batch {batch.id[:130]!r}, not {batch_id!r}")
        return batch

    def _parse(self, read: Callable[[bytes], Model], body: bytes) -> Model:
        try:
            return read(body)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in error["loc"]) or "body"
            if error["type"] == "json_invalid":
                raise PermanentError(f"answer is not JSON: {self._snippet(body)}") from None
            raise PermanentError(f"invalid answer: {where}: {error['msg']}") from None

    async def _call(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        idempotent: bool = True,
    ) -> bytes:
        if not self.breaker.allow():
            raise TemporaryError(f"provider {self.name!r} unavailable: backing off", unsent=True)
        attempt = 0
        while True:
            try:
                body = await self._once(method, url, params)
            except TemporaryError as exc:
                delay = exc.retry_after if exc.retry_after is not None else backoff(attempt)
                final = attempt >= self._max_retries or delay > MAX_SERVER_DELAY
                if final or not (idempotent or exc.unsent):
                    self.breaker.failure()
                    raise
                attempt += 1
                await self._sleep(delay)
            except PermanentError:
                self.breaker.success()  # it answered: the provider is there
                raise
            else:
                self.breaker.success()
                return body

    async def _once(self, method: str, url: str, params: Mapping[str, str] | None) -> bytes:
        if self._session is None or self._slots is None:
            raise RuntimeError(f"{self!r} used outside 'async with'")
        try:
            request = self._session.request(method, url, params=params, allow_redirects=False)
            async with self._slots, request as resp:
                body = await _read_capped(resp)
                status, headers = resp.status, resp.headers
                self._note_clock(headers.get("Date"))
        except TimeoutError:
            raise TemporaryError(f"no answer within {self._timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise TemporaryError(
                f"connection failed: {self._scrub(type(exc).__name__)}", unsent=True
            ) from None
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"connection failed: {self._scrub(type(exc).__name__)}") from None
        if status < 300:
            return body
        if status < 400:  # never followed: a POST must not turn into a GET elsewhere
            where = urlsplit(headers.get("Location", "")).netloc or "(no location)"
            raise PermanentError(f"HTTP {status}: unexpected redirect to {where}", status=status)
        message = f"HTTP {status}: {self._snippet(body)}"
        if status in (408, 429) or status >= 500:
            wait = retry_after(headers, datetime.now(UTC))
            raise TemporaryError(message, status=status, retry_after=wait, unsent=status == 429)
        if status == 404:
            raise NotFound(message, status=status)
        raise PermanentError(message, status=status)

    def _note_clock(self, date: str | None) -> None:
        if not date:
            return
        try:
            theirs = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if theirs.tzinfo is None:
            theirs = theirs.replace(tzinfo=UTC)
        self.clock_offset = (theirs - datetime.now(UTC)).total_seconds()

    def _snippet(self, body: bytes) -> str:
        """The error's message, or the body's start: short, one line, key-free."""
        # Scrub before cutting: a key straddling the cut would leave a piece unmatched.
        text = self._scrub(body[: SNIPPET * 4 + MAX_KEY].decode("utf-8", "replace"))
        text = text[: SNIPPET * 4]
        try:
            data = json.loads(body)
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                text = error["message"]
        except ValueError:
            pass
        text = self._scrub(" ".join(text.split()))
        return (text[:SNIPPET] + ("…" if len(text) > SNIPPET else "")) or "(empty body)"

    def _scrub(self, text: str) -> str:
        key = self._api_key.get_secret_value() if self._api_key else ""
        return text.replace(key, "[redacted]") if key else text
