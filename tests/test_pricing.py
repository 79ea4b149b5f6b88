"""Cost from usage tokens: cached input and reasoning output are never counted twice;
no price or no usage means unknown, never zero."""

from decimal import Decimal

import pytest
from pydantic import ValidationError

from watchdog.core.models import Counts, Tokens
from watchdog.core.pricing import Price, batch_cost, cost_usd, find_price, projected_cost, usd

LLAMA = Price(model="meta-llama/*", input=Decimal("0.03"), output=Decimal("0.05"))
CACHED = Price(
    model="gpt-*", input=Decimal("0.50"), cached_input=Decimal("0.25"), output=Decimal("2.00")
)


@pytest.mark.parametrize(
    ("tokens", "price", "expected"),
    [
        (Tokens(50_000_000, 0, 100_000_000, 0), LLAMA, "6.50"),
        (Tokens(5_000_000, 0, 5_000_000, 0), LLAMA, "0.40"),
        (Tokens(4_000_000, 3_000_000, 1_000_000, 800_000), CACHED, "3.25"),
        (Tokens(0, 0, 0, 0), CACHED, "0"),
        (Tokens(1_000_000, 1_000_000, 0, 0), CACHED, "0.25"),
        (Tokens(1, 0, 0, 0), LLAMA, "0.00000003"),
    ],
)
def test_cost_table(tokens: Tokens, price: Price, expected: str) -> None:
    """The contract's formula, exactly, in decimal dollars."""
    assert cost_usd(tokens, price) == Decimal(expected)


def test_cached_input_defaults_to_input() -> None:
    """Without cached_input, cached tokens cost the input price."""
    assert cost_usd(Tokens(2_000_000, 1_000_000, 0, 0), LLAMA) == Decimal("0.06")


def test_first_matching_row_wins_and_provider_narrows() -> None:
    """Rows are tried in order; a provider-scoped row skips other providers."""
    scoped = Price(model="meta-llama/*", provider="deepinfra", input=Decimal(1), output=Decimal(1))
    prices = [scoped, LLAMA]
    assert find_price(prices, "deepinfra", "meta-llama/x") is scoped
    assert find_price(prices, "openai", "meta-llama/x") is LLAMA
    assert find_price(prices, "openai", "gpt-4o") is None
    assert find_price(prices, "openai", None) is None


@pytest.mark.parametrize(
    ("model", "tokens"),
    [("unpriced/model", Tokens(1, 0, 1, 0)), (None, Tokens(1, 0, 1, 0)), ("meta-llama/x", None)],
)
def test_unknown_cost_is_none_not_zero(model: str | None, tokens: Tokens | None) -> None:
    """No price or no usage: the cost is unknown (None)."""
    assert batch_cost([LLAMA], "p", model, tokens) is None


@pytest.mark.parametrize(
    ("cost", "counts", "min_requests", "expected"),
    [
        ("1", Counts(100, 10, 0), 10, "10"),
        ("1", Counts(100, 8, 2), 10, "10"),
        ("1", Counts(100, 9, 0), 10, None),
        (None, Counts(100, 50, 0), 10, None),
        ("1", None, 10, None),
        ("1", Counts(0, 0, 0), 1, None),
        ("2", Counts(100, 100, 0), 10, "2"),
    ],
)
def test_projection(
    cost: str | None, counts: Counts | None, min_requests: int, expected: str | None
) -> None:
    """Cost per finished request times total, once min_requests have finished."""
    result = projected_cost(None if cost is None else Decimal(cost), counts, min_requests)
    assert result == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize("glob", ["meta-llama/[", "a[b"])
def test_bad_globs_are_refused(glob: str) -> None:
    """An unclosed bracket is a config error, not a silent never-match."""
    with pytest.raises(ValueError, match="bad glob"):
        Price(model=glob, input=Decimal(1), output=Decimal(1))


@pytest.mark.parametrize(
    ("cost", "previous", "elapsed", "caps", "expected"),
    [
        (4.0, 3.0, 60, [5.0], 60.0),  # $1 a minute, $1 to go
        (4.5, 3.0, 60, [5.0, 10.0], 20.0),
        (4.0, 4.0, 60, [5.0], None),  # not growing
        (6.0, 3.0, 60, [5.0], None),  # already past every cap
        (4.0, 3.0, 0, [5.0], None),
        (4.0, 3.0, 60, [], None),
    ],
)
def test_seconds_to_cross(
    cost: float, previous: float, elapsed: float, caps: list[float], expected: float | None
) -> None:
    """Adaptive polling's arithmetic: when the spend rate takes the cost past a cap."""
    from watchdog.core.pricing import seconds_to_cross

    assert seconds_to_cross(cost, previous, elapsed, caps) == expected


def test_money_is_bounded_where_it_is_written_and_never_fails_to_print() -> None:
    """A price or threshold past a trillion dollars is a config error (the database and
    the events hold 12 digits before the point); an amount too long to round to the
    micro-dollar is still an amount."""
    with pytest.raises(ValidationError, match="less than or equal to 1000000000000"):
        Price(model="m", input="1e22", output=1)
    assert usd(Decimal("1e30")) == 1e30 and usd(Decimal("1.23456789")) == 1.234568
