"""The safety limits' schema: what holds whatever the policies say (the caps on cancels,
the cool-down after a trip, the exempt metadata, the clock-skew hold)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from watchdog.core.durations import Duration
from watchdog.core.schema import Strict


class SafetySettings(Strict):
    """Limits that hold whatever the policies say."""

    max_cancels_per_tick: int = Field(default=20, ge=0, description="cancels in one tick")
    max_cancels_per_hour: int = Field(default=100, ge=0, description="cancels in any hour")
    cool_down: Duration | None = Field(
        default=timedelta(hours=1),
        description="after a trip, alert-only this long (null: until `resume`)",
    )
    exempt_metadata: dict[str, str] = Field(
        default_factory=lambda: {"watchdog": "off"},
        description="batches whose metadata has all these pairs are never cancelled",
    )
    cancel_poll_interval: Duration = Field(
        default=timedelta(seconds=15), description="poll a cancelled batch this often until done"
    )
    cancel_stuck_after: Duration = Field(
        default=timedelta(minutes=15), description="cancelling longer than this: cancel_stuck"
    )
    max_clock_skew: Duration | None = Field(
        default=timedelta(minutes=5),
        description="hold every cancel to a provider whose Date header is further than this "
        "from the local clock (null: never check)",
    )
