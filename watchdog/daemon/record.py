"""Step "record" of a tick, and the one way an event leaves the daemon: written with
its row changes first; only what committed is then logged, counted in metrics and
handed to the listeners (webhooks). The audit table and the log never disagree."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog

from watchdog.core.events import Event
from watchdog.core.rows import Change
from watchdog.daemon.metrics import Metrics
from watchdog.storage.store import Store

log = structlog.get_logger("watchdog.engine")
Listener = Callable[[list[Event]], None]


def log_event(event: Event) -> None:
    """An event's log line: the kind as the event name, its fields and detail."""
    getattr(log, event.log_level)(
        str(event.kind),
        batch_id=event.batch_id,
        provider=event.provider,
        policy=event.policy,
        from_status=event.from_status,
        to_status=event.to_status,
        **(event.detail or {}),
    )


@dataclass(frozen=True, slots=True)
class Written:
    """What a write kept: the rows (keys) and the events that committed."""

    rows: set[tuple[str, str]]
    events: list[Event]


class Emitter:
    """Writes, then tells."""

    def __init__(self, store: Store, metrics: Metrics, listeners: Sequence[Listener] = ()) -> None:
        self.store = store
        self.metrics = metrics
        self.listeners = list(listeners)

    async def write(
        self, changes: Sequence[Change], events: Iterable[Event], *, owner: str | None = None
    ) -> Written:
        """Rows and events in one transaction. With ``owner``, a row this replica no
        longer leases is not written and its events are dropped (and not told): the
        batch is another replica's now. A failed commit raises, and tells nothing."""
        events = list(events)
        rows = await self.store.claims.apply(changes, events, owner=owner)
        lost = {c.key for c in changes} - rows
        for provider, batch_id in sorted(lost):
            log.warning(
                "lease_lost",
                batch_id=batch_id,
                provider=provider,
                note="results dropped; the batch is another replica's now",
            )
        committed = [e for e in events if e.key not in lost]
        self.tell(committed)
        return Written(rows, committed)

    def tell(self, committed: list[Event]) -> None:
        """Log, count and hand on events that are already in the database."""
        for event in committed:
            log_event(event)
            self.metrics.count(event)
        if committed:
            for listener in self.listeners:
                listener(committed)
