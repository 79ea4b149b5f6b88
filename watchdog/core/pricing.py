"""Prices (USD per 1M tokens), price lookup by provider and model glob, and the
cost and projection maths. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator

from watchdog.core.models import Counts, Tokens
from watchdog.core.schema import Strict

MILLION = Decimal(1_000_000)
# The largest amount of money a setting may name: the database keeps USD as NUMERIC(24,
# 12) (12 digits before the point) and events round to the micro-dollar within the 28
# digits of Decimal's context — a trillion dollars is far past any real limit.
MAX_USD = Decimal(10**12)
Money = Annotated[Decimal, Field(ge=0, le=MAX_USD)]  # a money setting, in USD


def check_glob(pattern: str) -> str:
    """Refuse globs fnmatch would silently mis-read (an unclosed ``[``)."""
    depth = 0
    for char in pattern:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"bad glob {pattern!r}: unclosed '['")
    return pattern


class Price(Strict):
    """One row of the ``pricing`` table: the first row matching a batch wins."""

    model: str = Field(description="model name or glob, e.g. 'meta-llama/*'")
    provider: str | None = Field(default=None, description="only for this provider")
    input: Money = Field(description="USD per 1M input tokens")
    cached_input: Money | None = Field(default=None, description="defaults to input")
    output: Money = Field(description="USD per 1M output tokens")

    _glob = field_validator("model")(check_glob)

    @property
    def cached_rate(self) -> Decimal:
        return self.input if self.cached_input is None else self.cached_input

    def matches(self, provider: str, model: str | None) -> bool:
        if model is None or (self.provider is not None and self.provider != provider):
            return False
        return fnmatchcase(model, self.model)


def find_price(prices: Sequence[Price], provider: str, model: str | None) -> Price | None:
    """The first price row for this provider and model, or None (cost unknown)."""
    if isinstance(prices, tuple):  # the daemon's (immutable) rules: looked up once a model
        return _first_price(prices, provider, model)
    return next((p for p in prices if p.matches(provider, model)), None)


@lru_cache(maxsize=4096)
def _first_price(prices: tuple[Price, ...], provider: str, model: str | None) -> Price | None:
    return next((p for p in prices if p.matches(provider, model)), None)


def cost_usd(tokens: Tokens, price: Price) -> Decimal:
    """Cost so far; cached tokens are part of input and reasoning part of output."""
    uncached = tokens.input - tokens.cached
    total = (
        uncached * price.input + tokens.cached * price.cached_rate + tokens.output * price.output
    )
    return total / MILLION


def batch_cost(
    prices: Sequence[Price], provider: str, model: str | None, tokens: Tokens | None
) -> Decimal | None:
    """Cost so far, or None when usage or a price is missing: unknown is never zero."""
    price = find_price(prices, provider, model)
    if price is None or tokens is None:
        return None
    return cost_usd(tokens, price)


def seconds_to_cross(
    cost: float, previous: float, elapsed: float, thresholds: Sequence[float]
) -> float | None:
    """At the spend rate seen between two polls, seconds until the cost passes the lowest
    threshold still ahead of it; None when it is not growing or nothing is ahead."""
    rate = (cost - previous) / elapsed if elapsed > 0 else 0.0
    ahead = [t for t in thresholds if t >= cost]
    if rate <= 0 or not ahead:
        return None
    return (min(ahead) - cost) / rate


def projected_cost(
    cost: Decimal | None, counts: Counts | None, min_requests: int
) -> Decimal | None:
    """Cost at completion at the cost per finished request so far, once enough have finished."""
    if cost is None or counts is None or counts.total <= 0:
        return None
    finished = counts.finished
    if finished < max(min_requests, 1):
        return None
    return cost / finished * max(counts.total, finished)


def usd(amount: Decimal | None) -> float | None:
    """An amount for an event's JSON detail: to the micro-dollar, a number that prints
    exactly (the table columns keep the full decimal)."""
    if amount is None:
        return None
    try:
        return float(round(amount, 6))
    except InvalidOperation:  # past Decimal's 28 digits: no micro-dollars to round to
        return float(amount)


def dollars(amount: float | None, *, places: int = 2, unknown: str = "unknown") -> str:
    """An amount for people ($1,234.50); ``unknown`` when it is not known, never $0."""
    return unknown if amount is None else f"${amount:,.{places}f}"
