"""Operators' cancels (the API, the page's forms): read at each tick as verdicts under
the policy ``manual``, which the tick plans as a policy's; forgotten once planned, or
once their batch ended or left, or after an hour unclaimable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from watchdog.core.durations import parse_time
from watchdog.core.models import TERMINAL
from watchdog.core.policies import Verdict
from watchdog.storage.store import Store

MANUAL = "manual"  # the policy an operator's cancel is planned under
LIFE = timedelta(hours=1)
Key = tuple[str, str]


class Asks:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store, self.clock = store, clock

    async def verdicts(self) -> dict[Key, Verdict]:
        """Each batch an operator asked to cancel, with who asked and why."""
        asks = await self.store.coord.cancel_asks()
        return {k: Verdict(MANUAL, "cancel", dict(v)) for k, v in asks.items()}

    async def settle(self, asked: Mapping[Key, Verdict], claimed: set[Key]) -> None:
        """Forget the asks this tick planned, and those it never will: a batch another
        replica holds waits for a later tick, one that ended or left is dropped."""
        now, done = self.clock(), set(claimed)
        for key, verdict in asked.items():
            if key in done:
                continue
            listed = await self.store.reads.one(*key)
            ended = listed is None or listed.tracked.view.status in TERMINAL
            if ended or _stale(verdict.observed, now):
                done.add(key)
        await self.store.coord.drop_cancel_asks(done, now)


def _stale(ask: Mapping[str, object], now: datetime) -> bool:
    """An ask an hour old, or one whose time cannot be read (a hand-edited state)."""
    try:
        return now - parse_time(str(ask.get("at"))) > LIFE
    except ValueError:
        return True
