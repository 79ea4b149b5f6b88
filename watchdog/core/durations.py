"""Duration values for config and CLI: ``90s``, ``15m``, ``2h``, ``1d`` or plain seconds;
and ISO 8601 times read as UTC unless they name an offset."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# No duration the daemon uses makes sense past ten years, and a far larger one overflows
# the date arithmetic of every tick (now + lease_duration, created_at + age_above).
MAX_SECONDS = 10 * 365 * 86400
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: Any) -> timedelta:
    """Parse a duration; raise ValueError naming the accepted forms."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use 90s, 15m, 2h, 1d or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _PATTERN.match(str(value))
        if not match:
            raise ValueError(f"invalid duration {value!r}: use 90s, 15m, 2h, 1d or seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds >= 0:  # also NaN
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"invalid duration {value!r}: at most 3650d")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a duration in the largest unit that divides it exactly."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# What an editor checks a duration against (the config's JSON Schema): what
# parse_duration accepts, as a pattern, or plain seconds.
DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhd]?\s*$"},
        {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
    ],
    "examples": ["90s", "15m", "2h", "1d"],
}


def human_duration(seconds: float) -> str:
    """A measured duration as people read one, to the second: ``23h59m24s``, ``2d3h``,
    ``45s`` (a negative one, a moment past, with a minus)."""
    sign, left = ("-" if seconds < 0 else ""), round(abs(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + ("".join(parts) or "0s")


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(DURATION_SCHEMA),
]


def parse_time(text: str) -> datetime:
    """An ISO 8601 / RFC 3339 time; one written without an offset is UTC (what every
    provider means by it), never the host's zone. ValueError when unreadable."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso(value: datetime | None, timespec: str = "auto") -> str | None:
    """A moment as every output writes it (commands, JSON, the page, notifications):
    ISO 8601 in UTC, written with ``Z``; ``timespec`` as datetime.isoformat's."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def moment(text: str, now: datetime) -> datetime:
    """A moment as people write one: a duration ago (``7d``) or an ISO 8601 time (UTC
    unless it says); ValueError naming both forms."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (7d, 12h) nor an ISO 8601 time") from None
