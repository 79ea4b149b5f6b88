"""A circuit breaker per provider: it opens after repeated failures, lets one probe
through after a jittered, doubling delay, and reports each change to a listener."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from watchdog.clock import monotonic

Change = Literal["unavailable", "recovered"]
Listener = Callable[[Change, int], None]  # (change, failures in a row)


class Breaker:
    """After ``threshold`` failed calls in a row it opens for a jittered, doubling delay
    (up to ``cap``); then one call probes; success closes it. ``listener`` hears of
    each change as it happens (``unavailable``, ``recovered``)."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        base: float = 5.0,
        cap: float = 300.0,
        clock: Callable[[], float] = monotonic,
        rng: Callable[[], float] = random.random,
        listener: Listener | None = None,
    ) -> None:
        self.threshold, self.base, self.cap = threshold, base, cap
        self._clock, self._rng = clock, rng
        self.listener = listener
        self.failures = 0
        self.opened = 0  # times opened in a row: the backoff's exponent
        self.open_until: float | None = None
        self._probing = False

    @property
    def available(self) -> bool:
        return self.open_until is None

    def allow(self) -> bool:
        """False while open; after the delay, one probe at a time goes through."""
        if self.open_until is None:
            return True
        if self._probing or self._clock() < self.open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        was_open, failures = self.open_until is not None, self.failures
        self.failures, self.opened, self.open_until, self._probing = 0, 0, None, False
        if was_open:
            self._tell("recovered", failures)

    def failure(self) -> None:
        if self.open_until is not None and not self._probing:
            return  # calls already in flight when it opened: no news
        self.failures += 1
        if self.open_until is None and self.failures < self.threshold:
            return
        opening = self.open_until is None
        delay = min(self.base * 2**self.opened, self.cap) * (1 - 0.25 * self._rng())
        self.opened += 1
        self.open_until = self._clock() + delay
        self._probing = False
        if opening:
            self._tell("unavailable", self.failures)

    def _tell(self, change: Change, failures: int) -> None:
        if self.listener is not None:
            self.listener(change, failures)
