"""The one place the clocks are read: the wall clock (UTC) and the monotonic clock.
Everything else takes `now` (or a clock) as an argument."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def monotonic() -> float:
    return time.monotonic()


def epoch() -> float:
    """The wall clock as seconds since the epoch (what providers' timestamps count)."""
    return time.time()
