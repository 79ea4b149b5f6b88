"""A tick's summary: what it claimed, polled, changed and cancelled (its one log line,
the status page's and sd_notify's STATUS)."""

from __future__ import annotations

from dataclasses import dataclass

from watchdog.core.events import Event, Kind


@dataclass(slots=True)
class TickSummary:
    claimed: int = 0
    polled: int = 0
    poll_failed: int = 0
    status_changed: int = 0
    policy_matched: int = 0
    cancel_requested: int = 0
    cancel_succeeded: int = 0
    cancel_failed: int = 0
    cancel_held: int = 0
    safety_tripped: int = 0
    backlog: int = 0  # batches due when the tick ended (left for the next one)

    def count(self, committed: list[Event]) -> None:
        """The committed events' share of the summary."""
        for event in committed:
            if event.kind in COUNTED:  # each such kind is a field of the same name
                setattr(self, event.kind, getattr(self, event.kind) + 1)


COUNTED = frozenset(
    {
        Kind.STATUS_CHANGED,
        Kind.POLICY_MATCHED,
        Kind.CANCEL_REQUESTED,
        Kind.CANCEL_SUCCEEDED,
        Kind.CANCEL_FAILED,
        Kind.SAFETY_TRIPPED,
    }
)
