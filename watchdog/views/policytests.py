"""Policy tests (``batch-watchdog test-policies``): a YAML file of batch timelines and
expected outcomes, judged through the daemon's pure steps (``replay.judge``) with the
policies and prices of a config; no network, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from watchdog.core.durations import Duration, format_duration
from watchdog.core.estimates import Estimate, Share
from watchdog.core.models import BatchObject, BatchView
from watchdog.core.observe import Judging
from watchdog.core.schema import Strict, error_text
from watchdog.settings import ConfigError, Settings, load_settings, read_yaml
from watchdog.views.replay import Sample, Step, fresh, judge, usage_wire

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # t=0 of every timeline unless the file says
MAX_POLLS = 100_000  # judged in seconds


class Point(Strict):
    """The wire fields that change at ``at`` (the others stay as they were)."""

    at: Duration
    status: str | None = None
    counts: dict[str, int] | None = Field(default=None, description="total, completed, failed")
    usage: dict[str, int] | None = Field(
        default=None, description="input, output, cached, reasoning tokens so far"
    )


class InputFile(Strict):
    """What the batch's input file says, as its estimate would (known from t=0)."""

    requests: int = Field(ge=0)
    input_tokens: int = Field(ge=0, description="estimated, all requests together")
    output_tokens: int = Field(ge=0, description="the output bound, all requests together")

    def estimate(self, model: str | None, at: datetime) -> Estimate:
        share = Share(self.requests, self.input_tokens, self.output_tokens)
        return Estimate(at, requests=self.requests, models={model or "": share})


class TimedBatch(Strict):
    id: str
    provider: str
    model: str | None = None
    metadata: dict[str, str] | None = None
    age: Duration = Field(default=timedelta(0), description="created this long before t=0")
    window: Duration = Field(default=timedelta(hours=24), description="expires after this")
    timeline: list[Point] = Field(min_length=1)
    input_file: InputFile | None = Field(
        default=None, description="its estimate, for the estimated_* conditions"
    )


class Expect(Strict):
    """At ``at``, for ``batch``: the policy that matched (and its action), whether a
    cancel would be sent, or ``nothing`` at all."""

    at: Duration
    batch: str
    policy: str | None = None
    action: Literal["cancel", "alert"] | None = None
    cancel: bool | None = None
    nothing: bool = False

    @model_validator(mode="after")
    def _says_something(self) -> Expect:
        if not self.nothing and (self.policy, self.action, self.cancel) == (None, None, None):
            raise ValueError("an expectation needs policy, action, cancel or nothing: true")
        return self


class PolicyTest(Strict):
    config: str | dict[str, Any] | None = Field(
        default=None, description="a config file (relative) or inline; --config overrides it"
    )
    start: datetime = T0
    batches: list[TimedBatch] = Field(min_length=1)
    expect: list[Expect] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_batches(self) -> PolicyTest:
        ids = {b.id for b in self.batches}
        for e in self.expect:
            if e.batch not in ids:
                raise ValueError(f"expect: unknown batch {e.batch!r}; known: {sorted(ids)}")
        return self


def load(path: Path, config: Path | None = None) -> tuple[PolicyTest, Settings]:
    """The test file and its config (``config``, else the one the file names);
    ConfigError (exit 78) naming what is wrong."""
    if not path.is_file():
        raise ConfigError(f"{path}: policy test file not found")
    data = read_yaml(path)
    try:
        test = PolicyTest.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {error_text(exc, data, PolicyTest)}") from None
    if config is not None:
        settings = load_settings(config, environ={})
    elif test.config is None:
        raise ConfigError(f"{path}: no config: name one (config: FILE) or give --config")
    elif isinstance(test.config, str):
        settings = load_settings(path.parent / test.config, environ={})
    else:
        try:
            settings = Settings.model_validate(test.config)
        except ValidationError as exc:
            raise ConfigError(f"{path}: config: {error_text(exc, test.config, Settings)}") from None
    _bounded(path, test, settings)
    return test, settings


def _bounded(path: Path, test: PolicyTest, settings: Settings) -> None:
    """Each batch is polled every poll_interval up to the last expectation: a file that
    asks for millions of polls (a point at 3000d) is refused, not judged for minutes."""
    last = max(e.at for e in test.expect)
    polls = len(test.batches) * int(last / settings.poll_interval)
    if polls > MAX_POLLS:
        every = format_duration(settings.poll_interval)
        raise ConfigError(
            f"{path}: the last expectation ({format_duration(last)}) needs {polls:,} polls of "
            f"{len(test.batches)} batches every {every} (at most {MAX_POLLS:,}): judge a "
            "shorter timeline, or a config with a longer poll_interval"
        )


def run(test: PolicyTest, settings: Settings) -> list[str]:
    """Every failing expectation, as one line naming it and what was observed."""
    judging = Judging(settings.rules(), settings.cadence)
    last = max(e.at for e in test.expect)
    steps = {
        b.id: judge(
            fresh(_view(b, test.start), _estimate(b, test.start)),
            _samples(b, test.start),
            judging,
            every=settings.poll_interval,
            until=test.start + last + timedelta(seconds=1),
        )
        for b in test.batches
    }
    return [f for e in test.expect if (f := _check(e, steps[e.batch], test.start))]


def _estimate(batch: TimedBatch, start: datetime) -> Estimate | None:
    return None if batch.input_file is None else batch.input_file.estimate(batch.model, start)


def _view(batch: TimedBatch, start: datetime) -> BatchView:
    created = start - batch.age
    return BatchView(
        batch.provider,
        batch.id,
        None,
        model=batch.model,
        metadata=batch.metadata,
        created_at=created,
        expires_at=created + batch.window,
    )


def _samples(batch: TimedBatch, start: datetime) -> list[Sample]:
    """Each timeline point as the whole wire object (fields carried over)."""
    created = start - batch.age
    wire: dict[str, Any] = {
        "id": batch.id,
        "status": "validating",
        "created_at": int(created.timestamp()),
        "expires_at": int((created + batch.window).timestamp()),
        "model": batch.model,
        "metadata": batch.metadata,
    }
    samples = []
    for point in sorted(batch.timeline, key=lambda p: p.at):
        if point.status is not None:
            wire["status"] = point.status
        if point.counts is not None:
            wire["request_counts"] = {"completed": 0, "failed": 0} | point.counts
        if point.usage is not None:
            wire["usage"] = _usage(point.usage)
        answer = BatchObject.model_validate(wire)
        samples.append(Sample.of(start + point.at, batch.provider, answer))
    return samples


def _usage(tokens: dict[str, int]) -> dict[str, Any]:
    get = tokens.get
    return usage_wire(
        get("input", 0), get("output", 0), cached=get("cached", 0), reasoning=get("reasoning", 0)
    )


def _check(expect: Expect, steps: list[Step], start: datetime) -> str | None:
    at = start + expect.at
    where = f"{expect.batch} at {_offset(expect.at)}"
    step = next((s for s in steps if s.at == at), None)
    if step is None:
        done = steps[-1] if steps and steps[-1].cancel else None
        if done is not None and done.at < at:
            return f"{where}: cancelled at {_offset(done.at - start)} already"
        return f"{where}: no poll then (polls at the timeline's points and every interval)"
    verdict = step.verdict
    policy, action = (verdict.policy, verdict.action) if verdict else (None, None)
    wrong = (
        (expect.nothing and verdict is not None)
        or expect.policy not in (None, policy)
        or expect.action not in (None, action)
        or expect.cancel not in (None, step.cancel)
    )
    return f"{where}: expected {_wanted(expect)}, observed {_observed(step)}" if wrong else None


def _wanted(expect: Expect) -> str:
    if expect.nothing:
        return "nothing"
    parts = [f"policy {expect.policy}"] if expect.policy else []
    parts += [f"action {expect.action}"] if expect.action else []
    parts += [f"cancel {str(expect.cancel).lower()}"] if expect.cancel is not None else []
    return ", ".join(parts)


def _observed(step: Step) -> str:
    if step.verdict is None:
        return f"nothing (status {step.status})"
    text = f"policy {step.verdict.policy} ({step.verdict.action}"
    text += f", {step.verdict.observed})" if step.verdict.observed else ")"
    if step.verdict.action == "cancel":
        text += ", cancel sent" if step.cancel else f", cancel held: {step.held}"
    return text


def _offset(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())}s"
