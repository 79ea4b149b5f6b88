"""Cost estimates from a batch's input file, before it spends: the ``estimate`` settings,
the line-by-line reading of the JSONL requests (counted, never kept), the estimate as
stored, and its cost range at the batch prices. Pure: bytes in, figures out."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fnmatch import fnmatchcase
from math import ceil
from typing import Any

from pydantic import ByteSize, Field, field_validator

from watchdog.core.config import Timeout
from watchdog.core.durations import Duration, iso
from watchdog.core.pricing import MILLION, Price, check_glob, find_price, usd
from watchdog.core.schema import Strict

METHOD = "bytes_per_token"
BYTES_PER_TOKEN = 4.0  # OpenAI's rule of thumb for English text (cl100k / o200k)
DEFAULT_OUTPUT = 4096  # a request that names no output limit is bounded by this
PER_MESSAGE = 3  # chat framing around each message (<|start|>role ... <|end|>)
PER_REPLY = 3  # and the reply's priming
LIMITS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
MAX_LINE = 32 * 1024 * 1024  # a longer line is counted malformed, never held whole
MAX_ATTEMPTS = 3  # reads of a file that failed for a passing reason
# A file names its models: more distinct ones than this (or a longer name) are counted
# together under OTHER, which has no price (the estimate's cost is then unknown), so that
# what is stored stays small whatever the file says.
MAX_MODELS, MAX_MODEL_NAME = 64, 256
OTHER = "(other models)"


class ModelEstimate(Strict):
    """How to count one model family's tokens (the first ``model`` glob that matches)."""

    model: str = Field(description="model name or glob, e.g. 'gpt-4o*'")
    bytes_per_token: float = Field(
        default=BYTES_PER_TOKEN, gt=0, le=64, description="UTF-8 bytes of text per token"
    )
    max_output_tokens: int = Field(
        default=DEFAULT_OUTPUT,
        ge=0,
        description="output bound of a request that names no max_tokens (the model's cap)",
    )

    _glob = field_validator("model")(check_glob)


class EstimateSettings(Strict):
    """Reading input files to estimate a batch's cost before it runs."""

    max_file_bytes: ByteSize = Field(
        default=ByteSize(210 * 1000 * 1000),
        description="a larger input file is not read (estimate_failed); the providers "
        "take up to 200 MB",
    )
    timeout: Timeout = Field(default=timedelta(minutes=5), description="per file download")
    concurrency: int = Field(default=2, ge=1, le=64, description="files read at once")
    wait: Duration = Field(
        default=timedelta(seconds=5),
        description="how long a tick waits for the estimates it started before judging "
        "without them (the rest are judged at the next tick)",
    )
    models: tuple[ModelEstimate, ...] = Field(
        default=(), description=f"per model glob; else {BYTES_PER_TOKEN} bytes a token, "
        f"{DEFAULT_OUTPUT} output tokens",
    )  # fmt: skip

    def counting(self, model: str) -> ModelEstimate:
        """How to count ``model``'s tokens: its first matching row, else the defaults."""
        found = next((m for m in self.models if fnmatchcase(model, m.model)), None)
        return found or ModelEstimate(model="*")


@dataclass(slots=True)
class Share:
    """One model's part of a batch: its requests, estimated input tokens, the bound on
    its output tokens, and how many requests took the model's default bound."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    defaulted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "input_tokens", "output_tokens",
                                              "defaulted")}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a batch's input file said (made once, stored), or why it could not be read
    (``error``: a temporary one is tried again, up to ``MAX_ATTEMPTS``)."""

    made_at: datetime
    method: str = METHOD
    file_id: str | None = None
    bytes: int = 0
    requests: int = 0
    malformed: int = 0
    models: Mapping[str, Share] = field(default_factory=dict)  # "" : lines naming none
    error: str | None = None
    temporary: bool = False
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def settled(self) -> bool:
        """Nothing more to fetch: made, or failed for good."""
        return not self.failed or not self.temporary or self.attempts >= MAX_ATTEMPTS

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"made_at": self.made_at.isoformat(), "method": self.method}
        if self.failed:
            return found | {"error": self.error, "temporary": self.temporary,
                            "attempts": self.attempts, "file_id": self.file_id}  # fmt: skip
        return found | {
            "file_id": self.file_id,
            "bytes": self.bytes,
            "requests": self.requests,
            "malformed": self.malformed,
            "models": {name: share.as_dict() for name, share in self.models.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> Estimate | None:
        """The stored estimate, or None when the column holds none (or nothing readable:
        it is then made again, never trusted half-read)."""
        if not isinstance(data, dict):
            return None
        try:
            models = {str(k): Share(**v) for k, v in (data.get("models") or {}).items()}
            return cls(
                made_at=datetime.fromisoformat(data["made_at"]),
                method=str(data.get("method", METHOD)),
                file_id=data.get("file_id"),
                bytes=int(data.get("bytes", 0)),
                requests=int(data.get("requests", 0)),
                malformed=int(data.get("malformed", 0)),
                models=models,
                error=data.get("error"),
                temporary=bool(data.get("temporary", False)),
                attempts=int(data.get("attempts", 1)),
            )
        except (KeyError, TypeError, ValueError):
            return None


class Tally:
    """Reads an input file's lines as they stream in, keeping only sums: one request per
    JSONL line, its text measured in bytes, its output bounded by its own limit."""

    def __init__(self, settings: EstimateSettings) -> None:
        self.settings = settings
        self.bytes = 0
        self.requests = 0
        self.malformed = 0
        self.models: dict[str, Share] = {}
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE: dropped as it comes
        self._counting: dict[str, ModelEstimate] = {}

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the file (lines may straddle chunks)."""
        self.bytes += len(chunk)
        for line in self._lines(chunk):
            self._line(line)

    def finish(self, made_at: datetime, file_id: str | None) -> Estimate:
        """The estimate, once the file has ended (a last line without a newline counts)."""
        if self._skipping:
            self.malformed += 1
        elif self._partial.strip():
            self._line(bytes(self._partial))
        self._partial.clear()
        return Estimate(
            made_at=made_at,
            file_id=file_id,
            bytes=self.bytes,
            requests=self.requests,
            malformed=self.malformed,
            models=dict(self.models),
        )

    def _lines(self, chunk: bytes) -> Iterator[bytes]:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
                self.malformed += 1
            elif self._partial:
                self._partial += chunk[start:end]
                yield bytes(self._partial)
                self._partial.clear()
            else:
                yield chunk[start:end]
            start = end + 1
        if not self._skipping:
            self._partial += chunk[start:]
            if len(self._partial) > MAX_LINE:
                self._partial.clear()
                self._skipping = True

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        request = read_request(line)
        if request is None:
            self.malformed += 1
            return
        self.requests += 1
        model = request.model
        if model not in self.models and (
            len(self.models) >= MAX_MODELS or len(model) > MAX_MODEL_NAME
        ):
            model = OTHER
        share = self.models.setdefault(model, Share())
        counting = self._counting.get(model)
        if counting is None:
            counting = self._counting[model] = self.settings.counting(model)
        share.requests += 1
        share.input_tokens += request.tokens(counting.bytes_per_token)
        if request.max_output is None:
            share.defaulted += 1
            share.output_tokens += counting.max_output_tokens * request.choices
        else:
            share.output_tokens += request.max_output * request.choices


@dataclass(frozen=True, slots=True)
class Request:
    """One line of an input file, measured: the text it sends (UTF-8 bytes), how many
    chat messages frame it, its output limit (None: none given) and choices (``n``)."""

    model: str
    text_bytes: int
    messages: int = 0
    max_output: int | None = None
    choices: int = 1

    def tokens(self, bytes_per_token: float) -> int:
        framing = PER_MESSAGE * self.messages + (PER_REPLY if self.messages else 0)
        return ceil(self.text_bytes / bytes_per_token) + framing


def read_request(line: bytes) -> Request | None:
    """A JSONL line as a request (OpenAI's ``{custom_id, method, url, body}``, Mistral's
    ``{custom_id, body}``), or None when it is not one."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    body = data.get("body") if isinstance(data, dict) else None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    embeddings = "embeddings" in str(data.get("url", ""))
    messages = body.get("messages")
    text = 0
    if isinstance(messages, list):
        text = sum(_text_bytes(m.get("content") if isinstance(m, dict) else m) for m in messages)
    for key in ("input", "prompt", "instructions", "system", "tools", "functions"):
        if key in body:
            text += _text_bytes(body[key])
    return Request(
        model=model if isinstance(model, str) else "",
        text_bytes=text,
        messages=len(messages) if isinstance(messages, list) else 0,
        max_output=0 if embeddings else _limit(body),
        choices=_choices(body),
    )


def _text_bytes(value: Any) -> int:
    """The UTF-8 bytes of the text in a message's content (a string, or parts with
    ``text``), an input or prompt (strings or lists of them), or tool definitions (as
    JSON: the model reads their schema)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return len(value["text"].encode())
        if "content" in value:
            return _text_bytes(value["content"])
        if value.get("type") in ("image_url", "input_image", "image", "input_audio"):
            return 0  # not text: not counted (see the README)
        return len(json.dumps(value, separators=(",", ":")).encode())
    return 0


def _limit(body: Mapping[str, Any]) -> int | None:
    for key in LIMITS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1


@dataclass(frozen=True, slots=True)
class Range:
    """An estimate's cost: ``low`` (its input alone) to ``high`` (input and every
    request writing its whole output bound), and its requests."""

    low: Decimal
    high: Decimal
    requests: int


def estimated_cost(
    prices: Sequence[Price], provider: str, batch_model: str | None, estimate: Estimate | None
) -> Range | None:
    """The cost range at the batch prices; None when there is no estimate or a model in
    it has no price (unknown, never zero). Lines naming no model take the batch's."""
    if estimate is None or estimate.failed:
        return None
    low = high = Decimal(0)
    for name, share in estimate.models.items():
        price = None if name == OTHER else find_price(prices, provider, name or batch_model)
        if price is None:
            return None
        cost_in = share.input_tokens * price.input / MILLION
        low += cost_in
        high += cost_in + share.output_tokens * price.output / MILLION
    return Range(low, high, estimate.requests)


def estimate_error(estimate: Range | None, cost: Decimal | None) -> dict[str, Any] | None:
    """How far the estimate was from what the batch cost, for the audit event of its
    end: the real cost against the range, as a ratio of the upper bound."""
    if estimate is None or cost is None:
        return None
    within = estimate.low <= cost <= estimate.high
    ratio = None if estimate.high == 0 else float(round(cost / estimate.high, 4))
    return {
        "estimated_low_usd": usd(estimate.low),
        "estimated_high_usd": usd(estimate.high),
        "cost_usd": usd(cost),
        "within_range": within,
        "cost_to_high": ratio,
    }


def summary(
    estimate: Estimate | None, found: Range | None, cost: Decimal | None, ended: bool
) -> dict[str, Any] | None:
    """An estimate as ``explain``, the page and the API show it (JSON): its figures and
    cost range, why it failed, or once the batch ended, how far it was from its cost."""
    if estimate is None:
        return None
    said: dict[str, Any] = {"made_at": iso(estimate.made_at), "method": estimate.method}
    if estimate.failed:
        return said | {"error": estimate.error, "temporary": estimate.temporary,
                       "attempts": estimate.attempts}  # fmt: skip
    shares = estimate.models.values()
    said |= {
        "requests": estimate.requests,
        "malformed": estimate.malformed,
        "bytes": estimate.bytes,
        "input_tokens": sum(s.input_tokens for s in shares),
        "output_tokens_bound": sum(s.output_tokens for s in shares),
        "output_defaulted": sum(s.defaulted for s in shares),
        "low_usd": None if found is None else usd(found.low),
        "high_usd": None if found is None else usd(found.high),
    }
    if ended:
        said["estimate_error"] = estimate_error(found, cost)
    return said
