"""Durations in config: 90s, 15m, 2h, 1d or plain seconds; anything else is refused."""

from datetime import timedelta

import pytest

from watchdog.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        (45, 45),
        ("30", 30),
        (" 5m ", 300),
        ("1.5h", 5400),
        (0, 0),
        (2.5, 2.5),
    ],
)
def test_parses_each_form(text: object, seconds: float) -> None:
    """Each documented form parses to the right number of seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5 minutes",
        "1w",
        "-5s",
        "h",
        "1h30m",
        True,
        "∞",
        "3651d",
        "99999999999999999999d",
        float("inf"),
        float("nan"),
    ],
)
def test_refuses_other_forms(text: object) -> None:
    """Anything else raises ValueError naming the accepted forms, or the bounds."""
    with pytest.raises(ValueError, match=r"90s, 15m, 2h, 1d|negative|at most 3650d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600, "1h"), (90, "90s"), (86400, "1d"), (900, "15m"), (1.5, "1.5s")]
)
def test_formats_in_the_largest_exact_unit(seconds: float, text: str) -> None:
    """check-config shows durations the way a user writes them."""
    assert format_duration(timedelta(seconds=seconds)) == text
