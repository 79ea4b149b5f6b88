"""The pure parts of the config's schema: the safety limits, notifications, retention
(what reads files or the environment — keys, tokens, the file itself — is in
watchdog/settings.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from watchdog.core.durations import Duration
from watchdog.core.events import Kind
from watchdog.core.schema import Strict


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be more than 0s (0 would disable the timeout)")
    return value


Timeout = Annotated[Duration, AfterValidator(_positive)]


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


NOTIFY_EVENTS = (  # what a webhook gets unless it names its kinds (any event kind)
    Kind.POLICY_MATCHED,
    Kind.CANCEL_SUCCEEDED,
    Kind.CANCEL_FAILED,
    Kind.CANCEL_STUCK,
    Kind.SAFETY_TRIPPED,
)


class Webhook(Strict):
    """A receiver of a JSON POST per event: ``generic`` (the event, and a ``text``;
    signed when it has a secret), ``slack`` (Block Kit) or ``pagerduty`` (Events API
    v2; the secret is the routing key)."""

    url: str = Field(pattern=r"^https?://[^\s/]+", description="receives a JSON POST")
    events: list[Kind] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), description="the event kinds it gets"
    )
    timeout: Timeout = Field(default=timedelta(seconds=10), description="per delivery")
    format: Literal["generic", "slack", "pagerduty"] = Field(
        default="generic", description="generic (signed JSON), slack or pagerduty"
    )
    secret_env: str | None = Field(
        default=None,
        description="generic: the HMAC-SHA256 signing key; pagerduty: the routing key",
    )
    secret_file: Path | None = Field(default=None, description="or a file holding it")

    @model_validator(mode="after")
    def _pagerduty_needs_its_key(self) -> Webhook:
        if self.format == "pagerduty" and self.secret_env is None and self.secret_file is None:
            raise ValueError("format pagerduty: give the routing key in secret_env or secret_file")
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("give one of secret_env and secret_file")
        return self


class NotifySettings(Strict):
    webhooks: list[Webhook] = Field(
        default_factory=list, description="where events are posted as they are recorded"
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+",
        description="the daemon as people reach it (its HTTP server): links in notifications",
    )


ROUTINE: dict[Kind, timedelta | None] = {Kind.COUNTS_CHANGED: timedelta(days=7)}


class SampleRetention(Strict):
    """How the polls' samples (replay's history) thin with age."""

    thin_after: Duration = Field(
        default=timedelta(days=7), description="older samples keep one per batch and step"
    )
    step: Timeout = Field(
        default=timedelta(hours=1), description="what a thinned sample stands for"
    )
    drop_after: Duration = Field(default=timedelta(days=90), description="then deleted")

    @model_validator(mode="after")
    def _order(self) -> SampleRetention:
        if self.drop_after < self.thin_after:
            raise ValueError("drop_after: must not be shorter than thin_after")
        return self


class RetentionSettings(Strict):
    """How long events of each kind are kept (the rest: for ever)."""

    events: dict[Kind, Duration | None] = Field(
        default_factory=lambda: dict(ROUTINE),
        description="kind: age after which its events are deleted (null: kept); "
        "replaces the default map when given",
    )
    samples: SampleRetention = Field(
        default_factory=lambda: SampleRetention(), description="how replay's history thins"
    )
    every: Timeout = Field(default=timedelta(minutes=10), description="how often to prune")
    batch: int = Field(default=1000, ge=1, le=100_000, description="rows per delete")
    max_batches: int = Field(default=50, ge=1, description="deletes per run, at most")


NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a provider's or a token's name
Role = Literal["viewer", "operator"]


class ApiToken(Strict):
    """A named token for the API and the page, and what it may do: ``viewer`` reads,
    ``operator`` reads and writes. Its value lives in ``env`` or ``file``."""

    name: str = Field(pattern=NAME_PATTERN, description="said in the audit log as the actor")
    role: Role = Field(description="viewer (reads) or operator (reads and writes)")
    env: str | None = Field(default=None, description="environment variable with the token")
    file: Path | None = Field(default=None, description="or a file holding it")

    @model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env and file")
        return self
