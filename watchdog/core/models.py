"""The wire model (OpenAI's Batch object, as DeepInfra and others return it), the
normalised view that policies read, the status sets and batch-id validation."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

ACTIVE = frozenset({"validating", "in_progress", "finalizing"})
CANCELLING = "cancelling"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
KNOWN = ACTIVE | TERMINAL | {CANCELLING}

_BATCH_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class InvalidBatchId(ValueError):
    """A batch id that must never go into a URL."""


def is_batch_id(value: object) -> bool:
    """Whether ``value`` may go into a URL as a batch id."""
    return isinstance(value, str) and bool(_BATCH_ID.fullmatch(value)) and value not in (".", "..")


def validate_batch_id(batch_id: str) -> str:
    """Return the id unchanged, or raise InvalidBatchId saying what is wrong with it."""
    if is_batch_id(batch_id):
        return batch_id  # the common case first: every poll of every batch comes here
    shown = repr(batch_id if len(batch_id) <= 60 else batch_id[:60] + "…")
    if batch_id in (".", ".."):
        raise InvalidBatchId(f"invalid batch id {shown}: '.' and '..' are not ids")
    raise InvalidBatchId(f"invalid batch id {shown}: use 1-128 characters from A-Z a-z 0-9 _ . : -")


def is_unknown_status(status: str | None) -> bool:
    """A status we have never seen: tracked and logged, never cancelled automatically."""
    return status is not None and status not in KNOWN


# Wire bounds. Every number and string the daemon stores is checked here, per batch, so
# an answer the spec allows but the database or the clock cannot hold (a time in
# milliseconds, a count of 2**63, a 1e400, a status of a kilobyte) fails that batch's
# poll alone instead of the tick's write.
LATEST = 4_102_444_800  # 2100-01-01: a Unix time in seconds, not milliseconds
MAX_COUNT = 2**53 - 1  # exact as a float, far below BIGINT's limit
MAX_STATUS = 64  # the bounded columns of ``batches`` (tables.py)
MAX_MODEL = 256
MAX_ENDPOINT = 128
MAX_FILE_ID = 128


def _whole_number(value: Any) -> Any:
    # Some compatible servers send 1764320400.0; a fractional second is of no use to us.
    if isinstance(value, float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return int(value)
    return value


def _seconds(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= LATEST:
        hint = " (milliseconds?)" if value > LATEST else ""
        raise ValueError(f"{value} is not a Unix time in seconds before 2100{hint}")
    return value


def _count(value: int) -> int:
    if not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{value} is out of range (0 to 2**53-1)")
    return value


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _bounded(limit: int) -> Any:
    def check(value: str | None) -> str | None:
        if value is not None and len(value) > limit:
            raise ValueError(f"longer than {limit} characters ({len(value)})")
        return value

    return AfterValidator(check)


def _batch_id(value: str) -> str:
    validate_batch_id(value)
    return value


Timestamp = Annotated[int | None, BeforeValidator(_whole_number), AfterValidator(_seconds)]
Count = Annotated[int, BeforeValidator(_whole_number), AfterValidator(_count)]
FileId = Annotated[str | None, BeforeValidator(_empty_is_none), _bounded(MAX_FILE_ID)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BatchErrorItem(_Wire):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(_Wire):
    object: str = "list"
    data: list[BatchErrorItem] = []


def _lenient_errors(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """``errors`` is kept, never judged: a shape of its own (Azure's spec gives ``data``
    as one object, not a list) is read where it can be and dropped where it cannot —
    it must never cost the watchdog the batch."""
    if isinstance(value, dict) and isinstance(value.get("data"), dict):
        value = {**value, "data": [value["data"]]}
    try:
        return handler(value)
    except ValidationError:
        return None


def _metadata(value: Any) -> Any:
    """Metadata is a mapping of keys to values of any JSON type (Mistral's and Groq's
    are); anything else is no metadata at all."""
    return value if isinstance(value, dict) else None


def as_text(value: Any) -> str:
    """A metadata value as policies, budgets and the page match and show it: a string
    as it is, anything else as compact JSON (``5``, ``true``, ``{"a":1}``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def metadata_text(metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Metadata with every value as its text (None stays None)."""
    if metadata is None:
        return None
    return {str(k): as_text(v) for k, v in metadata.items()}


class RequestCounts(_Wire):
    total: Count
    completed: Count
    failed: Count

    @model_validator(mode="after")
    def _finished_within_total(self) -> RequestCounts:
        # Never judge (a failure ratio, a progress) from counts that cannot be true.
        if self.completed + self.failed > self.total:
            raise ValueError(
                f"request_counts: completed + failed ({self.completed + self.failed}) "
                f"exceeds total ({self.total})"
            )
        return self


class InputTokensDetails(_Wire):
    cached_tokens: Count = 0


class OutputTokensDetails(_Wire):
    reasoning_tokens: Count = 0


class Usage(_Wire):
    """Token usage; legacy keys (prompt_tokens, …) are ignored."""

    input_tokens: Count
    input_tokens_details: InputTokensDetails | None = None
    output_tokens: Count
    output_tokens_details: OutputTokensDetails | None = None
    total_tokens: Count | None = None

    @model_validator(mode="after")
    def _parts_within_totals(self) -> Usage:
        if self.cached_tokens > self.input_tokens:
            raise ValueError("usage: cached_tokens exceeds input_tokens")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("usage: reasoning_tokens exceeds output_tokens")
        return self

    @property
    def cached_tokens(self) -> int:
        return self.input_tokens_details.cached_tokens if self.input_tokens_details else 0

    @property
    def reasoning_tokens(self) -> int:
        details = self.output_tokens_details
        return details.reasoning_tokens if details else 0


class BatchObject(_Wire):
    """OpenAI's Batch object; every field but id, status and created_at may be null."""

    id: Annotated[str, AfterValidator(_batch_id)]
    object: str = "batch"
    endpoint: Annotated[str | None, _bounded(MAX_ENDPOINT)] = None
    input_file_id: str | None = None
    completion_window: str | None = None
    status: Annotated[str, _bounded(MAX_STATUS)]
    created_at: Timestamp = None
    expires_at: Timestamp = None
    in_progress_at: Timestamp = None
    finalizing_at: Timestamp = None
    completed_at: Timestamp = None
    failed_at: Timestamp = None
    expired_at: Timestamp = None
    cancelling_at: Timestamp = None
    cancelled_at: Timestamp = None
    output_file_id: FileId = None
    error_file_id: FileId = None
    errors: Annotated[BatchErrors | None, WrapValidator(_lenient_errors)] = None
    request_counts: RequestCounts | None = None
    metadata: Annotated[dict[str, Any] | None, BeforeValidator(_metadata)] = None
    model: Annotated[str | None, _bounded(MAX_MODEL)] = None
    usage: Usage | None = None


class BatchPage(_Wire):
    """One page of ``GET /batches`` (read with ``read_page``)."""

    object: str = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
    skipped: int = 0  # malformed items left out (their batches are fetched singly)
    malformed: list[str] = []  # the valid ids of those items (discovery tracks them)
    raw_last_id: str | None = None  # the last item's id, even when that item was bad

    @property
    def cursor(self) -> str | None:
        """The id to page on from: last_id, else the last item's (valid ids only)."""
        last = self.data[-1].id if self.data else None
        for candidate in (self.last_id, self.raw_last_id, last):
            if is_batch_id(candidate):
                return candidate
        return None


def read_page(body: bytes) -> BatchPage:
    """A list page, in one pass when it is well formed; else item by item, so that one
    malformed item costs only itself (ValidationError when the page itself is bad)."""
    try:
        return BatchPage.model_validate_json(body)
    except ValidationError as exc:
        try:
            raw = json.loads(body)
        except ValueError:
            raise exc from None
        return page_of(raw)


def page_of(raw: Any) -> BatchPage:
    """A parsed list page (another dialect's, mapped), item by item where need be: one
    malformed item costs only itself (ValidationError when the page itself is bad)."""
    try:
        return BatchPage.model_validate(raw)
    except ValidationError:
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise
        return BatchPage.model_validate(_lenient(raw))


def _lenient(raw: dict[str, Any]) -> dict[str, Any]:
    good, skipped, malformed = [], 0, []
    for item in raw["data"]:
        try:
            good.append(BatchObject.model_validate(item))
        except ValidationError:
            skipped += 1
            found = item.get("id") if isinstance(item, dict) else None
            if is_batch_id(found):
                malformed.append(found)
    tail = raw["data"][-1] if raw["data"] else None
    last = tail.get("id") if isinstance(tail, dict) else None
    raw_last = last if isinstance(last, str) else None
    return {
        **raw,
        "data": good,
        "skipped": skipped,
        "malformed": malformed,
        "raw_last_id": raw_last,
    }


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    completed: int
    failed: int

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def as_dict(self) -> dict[str, int]:
        """As an event's detail writes it (dataclasses.asdict is ten times slower, and
        this runs for every poll that saw the counts move)."""
        return {"total": self.total, "completed": self.completed, "failed": self.failed}


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token usage; ``cached`` is part of ``input`` and ``reasoning`` part of ``output``."""

    input: int
    cached: int
    output: int
    reasoning: int

    def as_dict(self) -> dict[str, int]:
        return {"input": self.input, "cached": self.cached, "output": self.output,
                "reasoning": self.reasoning}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BatchView:
    """What policies read about one batch: the last state seen at the provider."""

    provider: str
    batch_id: str
    status: str | None
    model: str | None = None
    metadata: Mapping[str, str] | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    counts: Counts | None = None
    tokens: Tokens | None = None
    labels: Mapping[str, str] | None = None  # ours (track --label, the API), not the wire's


EARLIEST = 1_577_836_800  # 2020-01-01: no Batch API existed before


def implausible(batch: BatchObject, now: datetime) -> str | None:
    """Why a batch's timestamps cannot be true (then nothing in the answer is trusted)."""
    created, expires = batch.created_at, batch.expires_at
    if created is not None and created < EARLIEST:
        return f"implausible answer: created_at {created} is before 2020"
    if created is not None and created > now.timestamp() + 86_400:
        return f"implausible answer: created_at {created} is in the future"
    if created is not None and expires is not None and expires < created:
        return "implausible answer: expires_at is before created_at"
    return None


def from_unix(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def tokens_of(usage: Usage | None) -> Tokens | None:
    if usage is None:
        return None
    return Tokens(
        usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.reasoning_tokens
    )


def counts_of(counts: RequestCounts | None) -> Counts | None:
    return None if counts is None else Counts(counts.total, counts.completed, counts.failed)


def view_of(
    provider: str, batch: BatchObject, labels: Mapping[str, str] | None = None
) -> BatchView:
    """The normalised view of a wire object (with the labels we gave the batch)."""
    return BatchView(
        provider=provider,
        batch_id=batch.id,
        status=batch.status,
        model=batch.model,
        metadata=metadata_text(batch.metadata),
        created_at=from_unix(batch.created_at),
        expires_at=from_unix(batch.expires_at),
        counts=counts_of(batch.request_counts),
        tokens=tokens_of(batch.usage),
        labels=labels,
    )
