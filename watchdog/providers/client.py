"""The Batch API adapter (get, cancel, list) over the HTTP base, in the dialect of the
provider's ``api`` kind (``dialects``): the only place that sends its paths, headers
and parameters and reads its answers and its "already finished" answer to a cancel.
Keys never leave here and the HTTP base."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from watchdog.core.errors import CancelRefused, PermanentError
from watchdog.core.models import BatchObject, BatchPage, page_of, read_page, validate_batch_id
from watchdog.providers.breaker import Breaker
from watchdog.providers.dialects import DIALECTS, Auth, inward, inward_page
from watchdog.providers.http import HttpClient

Model = TypeVar("Model", bound=BaseModel)


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
        api: str = "openai",
        api_version: str | None = None,
        auth: Auth | None = None,
    ) -> None:
        self.name = name
        self.kind = DIALECTS[api]
        self.base_url = base_url.rstrip("/")
        self.params = self.kind.params(api_version)  # Azure's api-version, on every call
        self._pages: dict[str, int] = {}  # page-numbered lists: last id seen -> next page
        key = api_key.get_secret_value() if api_key is not None else ""
        self.http = HttpClient(
            name,
            headers={"Accept": "application/json"} | self.kind.headers(key, auth, api_version),
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
        body = await self.http.request("GET", self._batch_url(batch_id), params=self.params)
        return self._batch(body, batch_id)

    async def cancel(self, batch_id: str) -> BatchObject:
        """``POST /batches/{id}/cancel``; CancelRefused when the batch is already terminal.
        Sent again only when the provider certainly did not act on it: a cancel whose
        answer was lost is settled from the batch's state on the next poll instead."""
        try:
            url = self._batch_url(batch_id) + "/cancel"
            body = await self.http.request("POST", url, idempotent=False, params=self.params)
        except PermanentError as exc:
            if exc.status in (400, 409):
                raise CancelRefused(str(exc), status=exc.status) from None
            raise
        return self._batch(body, batch_id)

    @property
    def reads_files(self) -> bool:
        """Whether this API kind serves a batch's input file."""
        return self.kind.files is not None

    async def input_file(
        self, file_id: str, *, limit: int, timeout: float
    ) -> AsyncGenerator[bytes, None]:
        """``GET /files/{id}/content``: the input file's bytes as they arrive, at most
        ``limit`` of them (past it: PermanentError). The id is checked as a batch id's is
        before it goes into the URL."""
        if self.kind.files is None:
            raise PermanentError(f"{self.kind.name} has no files endpoint")
        url = f"{self.base_url}/{self.kind.files}/{validate_batch_id(file_id)}/content"
        async for chunk in self.http.stream(url, params=self.params, timeout=timeout, limit=limit):
            yield chunk

    async def list(self, *, limit: int = 100, after: str | None = None) -> BatchPage:
        """One page of the batch list (newest first; the cursor is the last id, which a
        page-numbered list maps to its next page number)."""
        size = str(max(1, min(limit, 100)))
        page, params = 0, {}
        if self.kind.paging == "page":
            if after is None:
                self._pages.clear()  # a new pass: what an earlier one left is of no use
            page = self._pages.pop(validate_batch_id(after), 0) if after else 0
            params = {"page": str(page), "page_size": size, "order_by": "-created"}
        elif self.kind.paging == "cursor":
            params = {"limit": size}
            if after is not None:
                params[self.kind.after] = validate_batch_id(after)
        url = f"{self.base_url}/{self.kind.batches}"
        body = await self.http.request("GET", url, params=params | self.params)
        found = self._parse(self._page_reader(page, int(size)), body)
        if self.kind.paging == "page" and found.cursor is not None:
            self._pages[found.cursor] = page + 1
        return found

    def _page_reader(self, page: int, size: int) -> Callable[[bytes], BatchPage]:
        if self.kind.name == "openai":
            return read_page  # one pass over the JSON: the hot path stays as it was

        def read(body: bytes) -> BatchPage:
            return page_of(inward_page(self.kind, _json(body), page, size))

        return read

    def _batch_url(self, batch_id: str) -> str:
        return f"{self.base_url}/{self.kind.batches}/{validate_batch_id(batch_id)}"

    def _read_batch(self, body: bytes) -> BatchObject:
        if self.kind.name == "openai":
            return BatchObject.model_validate_json(body)
        return BatchObject.model_validate(inward(self.kind, _json(body)))

    def _batch(self, body: bytes, batch_id: str) -> BatchObject:
        batch = self._parse(self._read_batch, body)
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


def _json(body: bytes) -> Any:
    """The body's JSON; a ValidationError-shaped failure (json_invalid) when it is not,
    as the one-pass reader would raise."""
    try:
        return json.loads(body)
    except ValueError:
        return BatchObject.model_validate_json(body)  # raises json_invalid for _parse
