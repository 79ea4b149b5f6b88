"""How often batches are polled: one value built from the config and handed to the
tick, the scheduler and the pure steps alike, so that they agree on it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


def slack(interval: timedelta) -> timedelta:
    """How much before a whole interval a batch is due again: the next tick, which may
    fire a hair early, finds it due."""
    return min(interval / 10, timedelta(seconds=5))


@dataclass(frozen=True, slots=True)
class Cadence:
    """The poll interval, and whether a batch about to cross a policy's threshold is
    polled early (adaptive polling)."""

    interval: timedelta
    adaptive: bool = True

    @property
    def slack(self) -> timedelta:
        return slack(self.interval)

    @property
    def again(self) -> timedelta:
        """After a poll, when a batch is due again (a slack before a whole interval)."""
        return self.interval - self.slack
