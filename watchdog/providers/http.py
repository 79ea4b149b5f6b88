"""The one HTTP client base (aiohttp): a long-lived session, timeouts, capped bodies,
bounded jittered retries that honour Retry-After, errors split into temporary and
permanent, an optional circuit breaker, and secrets scrubbed from every message.
Provider adapters and webhooks both send through it; nothing else imports aiohttp's
client."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from watchdog.clock import utcnow
from watchdog.core.errors import NotFound, PermanentError, TemporaryError
from watchdog.providers.breaker import Breaker

SNIPPET = 200
MAX_BODY = 16 * 1024 * 1024  # an answer larger than this fails its call, unread
MAX_KEY = 512  # no API key is longer: scrubbing looks this far past a cut
MAX_SERVER_DELAY = 30.0  # a longer Retry-After is left to the caller's next turn
USER_AGENT = "batch-watchdog/0.1"
REDACTED = "[redacted]"


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


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """OpenAI-SDK style: 0.5 s doubling to 8 s, minus up to 25 % jitter."""
    return float(min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * rng()))


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


def _their_clock(date: str | None) -> float | None:
    """The server's clock minus ours (seconds), from a Date header."""
    if not date:
        return None
    try:
        theirs = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=UTC)
    return (theirs - utcnow()).total_seconds()


@dataclass(frozen=True, slots=True)
class Sent:
    """What a request carries: query, a JSON body or bytes as given, extra headers."""

    params: Mapping[str, str] | None = None
    json_body: Any = None
    data: bytes | None = None
    headers: Mapping[str, str] | None = None


class HttpClient:
    """One long-lived session to one service. ``secrets`` (an API key, a webhook URL's
    token) are scrubbed from every error it raises."""

    def __init__(
        self,
        name: str,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        timeout: float = 30.0,
        max_retries: int = 2,
        concurrency: int = 16,
        breaker: Breaker | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._rng = rng
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._secrets = [s for s in secrets if s]
        self.timeout = timeout
        self._max_retries = max_retries
        self._concurrency = concurrency
        self.breaker = breaker
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        # The server's clock minus ours (seconds), from the last answer's Date header.
        self.clock_offset: float | None = None

    async def __aenter__(self) -> HttpClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300),
            raise_for_status=False,
        )
        self._slots = asyncio.Semaphore(self._concurrency)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        idempotent: bool = True,
        timeout: float | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """The body of a 2xx answer. Temporary failures are retried (with the server's
        Retry-After, else a backoff) unless the request is not idempotent and may have
        reached the server; anything else raises at once."""
        if self.breaker is not None and not self.breaker.allow():
            raise TemporaryError(f"{self.name!r} unavailable: backing off", unsent=True)
        attempt = 0
        while True:
            try:
                sent = Sent(params, json_body, data, headers)
                body = await self._once(method, url, sent, timeout)
            except TemporaryError as exc:
                delay = exc.retry_after
                if delay is None:
                    delay = backoff(attempt, self._rng)
                final = attempt >= self._max_retries or delay > MAX_SERVER_DELAY
                if final or not (idempotent or exc.unsent):
                    self._note(ok=False)
                    raise
                attempt += 1
                await self._sleep(delay)
            except PermanentError:
                self._note(ok=True)  # it answered: the server is there
                raise
            else:
                self._note(ok=True)
                return body

    async def stream(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        limit: int,
    ) -> AsyncGenerator[bytes, None]:
        """A large answer's body as it arrives (a file's content), never held whole: a
        PermanentError once it passes ``limit`` bytes (declared or read). Not retried here:
        the caller tries again later. ``timeout`` bounds the whole download."""
        if self.breaker is not None and not self.breaker.allow():
            raise TemporaryError(f"{self.name!r} unavailable: backing off", unsent=True)
        if self._session is None:
            raise RuntimeError(f"HTTP client {self.name!r} used outside 'async with'")
        extra: dict[str, Any] = {"headers": {"Accept": "*/*"}}
        if timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(total=timeout)
        request = self._session.get(url, params=params, allow_redirects=False, **extra)
        try:
            async with request as resp:
                if resp.status >= 300:
                    self._judge(resp.status, resp.headers, await _read_capped(resp))
                declared = resp.content_length
                if declared is not None and declared > limit:
                    raise PermanentError(f"file of {declared} bytes is over the {limit} byte limit")
                size = 0
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise PermanentError(f"file is over the {limit} byte limit")
                    yield chunk
        except TimeoutError:
            raise TemporaryError(f"not read within {timeout or self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"connection failed: {type(exc).__name__}") from None

    def _note(self, *, ok: bool) -> None:
        if self.breaker is not None:
            (self.breaker.success if ok else self.breaker.failure)()

    async def _once(self, method: str, url: str, sent: Sent, timeout: float | None) -> bytes:
        if self._session is None or self._slots is None:
            raise RuntimeError(f"HTTP client {self.name!r} used outside 'async with'")
        # Only a given timeout is passed: aiohttp reads timeout=None as "none at all".
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = aiohttp.ClientTimeout(total=timeout)
        try:
            if sent.data is not None:  # bytes as given (a signature covers them exactly)
                extra |= {"data": sent.data, "headers": {"Content-Type": "application/json"}}
            else:
                extra["json"] = sent.json_body
            if sent.headers:
                extra["headers"] = {**extra.get("headers", {}), **sent.headers}
            request = self._session.request(
                method, url, params=sent.params, allow_redirects=False, **extra
            )
            async with self._slots, request as resp:
                body = await _read_capped(resp)
                status, headers = resp.status, resp.headers
                offset = _their_clock(headers.get("Date"))
                self.clock_offset = self.clock_offset if offset is None else offset
        except TimeoutError:
            raise TemporaryError(f"no answer within {timeout or self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise TemporaryError(f"connection failed: {type(exc).__name__}", unsent=True) from None
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"connection failed: {type(exc).__name__}") from None
        return self._judge(status, headers, body)

    def _judge(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        if status < 300:
            return body
        if status < 400:  # never followed: a POST must not turn into a GET elsewhere
            where = urlsplit(headers.get("Location", "")).netloc or "(no location)"
            raise PermanentError(f"HTTP {status}: unexpected redirect to {where}", status=status)
        message = f"HTTP {status}: {self.snippet(body)}"
        if status in (408, 429) or status >= 500:
            wait = retry_after(headers, utcnow())
            raise TemporaryError(message, status=status, retry_after=wait, unsent=status == 429)
        if status == 404:
            raise NotFound(message, status=status)
        raise PermanentError(message, status=status)

    def snippet(self, body: bytes) -> str:
        """The error's message, or the body's start: short, one line, secret-free."""
        # Scrub before cutting: a key straddling the cut would leave a piece unmatched.
        text = self.scrub(body[: SNIPPET * 4 + MAX_KEY].decode("utf-8", "replace"))
        text = text[: SNIPPET * 4]
        try:
            data = json.loads(body)
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                text = error["message"]  # OpenAI's and Anthropic's shape
            elif isinstance(data, dict) and isinstance(data.get("message"), str):
                text = data["message"]  # Mistral's
        except ValueError:
            pass
        text = self.scrub(" ".join(text.split()))
        return (text[:SNIPPET] + ("…" if len(text) > SNIPPET else "")) or "(empty body)"

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text
