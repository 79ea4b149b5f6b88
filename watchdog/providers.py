"""The OpenAI-compatible Batch API adapter (get, cancel, list) over the HTTP base: the
only place that knows its paths, its answers' shapes and its "already finished"
answer to a cancel. Keys never leave here and the HTTP base."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from watchdog.breaker import Breaker
from watchdog.errors import CancelRefused, PermanentError
from watchdog.http import HttpClient
from watchdog.models import BatchObject, BatchPage, read_page, validate_batch_id

Model = TypeVar("Model", bound=BaseModel)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class ProviderClient:
    """One provider's Batch API over one long-lived HTTP client."""

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
        breaker: Breaker | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        key = api_key.get_secret_value() if api_key is not None else ""
        self.http = HttpClient(
            name,
            headers={"Accept": "application/json"} | _bearer(key),
            secrets=[key],
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
            breaker=breaker or Breaker(),
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"ProviderClient({self.name!r}, base_url={self.base_url!r})"

    @property
    def breaker(self) -> Breaker:
        assert self.http.breaker is not None
        return self.http.breaker

    @breaker.setter
    def breaker(self, breaker: Breaker) -> None:
        self.http.breaker = breaker

    @property
    def clock_offset(self) -> float | None:
        """The provider's clock minus ours (seconds), from its last answer's Date header:
        a host clock stepped away from the world's must not drive age-based cancels."""
        return self.http.clock_offset

    async def __aenter__(self) -> ProviderClient:
        await self.http.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.http.__aexit__(*exc_info)

    async def get(self, batch_id: str) -> BatchObject:
        """``GET /batches/{id}``."""
        body = await self.http.request("GET", self._batch_url(batch_id))
        return self._batch(body, batch_id)

    async def cancel(self, batch_id: str) -> BatchObject:
        """``POST /batches/{id}/cancel``; CancelRefused when the batch is already terminal.
        Sent again only when the provider certainly did not act on it: a cancel whose
        answer was lost is settled from the batch's state on the next poll instead."""
        try:
            url = self._batch_url(batch_id) + "/cancel"
            body = await self.http.request("POST", url, idempotent=False)
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
        body = await self.http.request("GET", f"{self.base_url}/batches", params=params)
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
                raise PermanentError(f"answer is not JSON: {self.http.snippet(body)}") from None
            raise PermanentError(f"invalid answer: {where}: {error['msg']}") from None
