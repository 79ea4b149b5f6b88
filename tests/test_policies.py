"""Pure policy evaluation, from tables: each condition, unknown inputs, match, order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from watchdog.core.models import BatchView, Counts
from watchdog.core.policies import CONDITIONS, Facts, Policy, When, describe, evaluate, judge

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def view(**fields: Any) -> BatchView:
    base: dict[str, Any] = {
        "provider": "deepinfra",
        "batch_id": "b",
        "status": "in_progress",
        "model": "meta-llama/x",
        "created_at": NOW - timedelta(hours=1),
        "expires_at": NOW + timedelta(hours=23),
        "counts": Counts(100, 10, 0),
    }
    return BatchView(**(base | fields))


def policy(when: dict[str, Any], **extra: Any) -> Policy:
    return Policy.model_validate({"name": "p", "when": when, "action": "cancel"} | extra)


def holds(when: dict[str, Any], cost: str | None = None, **fields: Any) -> bool:
    facts = Facts(view(**fields), None if cost is None else Decimal(cost), NOW)
    return judge(policy(when), facts) is not None


@pytest.mark.parametrize(
    ("when", "cost", "fields", "expected"),
    [
        ({"cost_usd_above": 5}, "6.50", {}, True),
        ({"cost_usd_above": 5}, "0.40", {}, False),
        ({"cost_usd_above": 5}, "5", {}, False),
        ({"cost_usd_above": 5}, None, {}, False),  # unknown cost never holds
        ({"projected_cost_usd_above": 50}, "1", {"counts": Counts(100, 1, 0)}, False),  # < min
        ({"projected_cost_usd_above": 50}, "6", {"counts": Counts(1000, 100, 0)}, True),
        ({"projected_cost_usd_above": 50}, "4", {"counts": Counts(1000, 100, 0)}, False),
        ({"age_above": "30m"}, None, {}, True),
        ({"age_above": "2h"}, None, {}, False),
        ({"age_above": "2h"}, None, {"created_at": None}, False),
        (
            {"expires_within": "1h", "progress_below": 0.5},
            None,
            {"expires_at": NOW + timedelta(minutes=40), "counts": Counts(100, 30, 0)},
            True,
        ),
        (
            {"expires_within": "1h", "progress_below": 0.5},
            None,
            {"expires_at": NOW + timedelta(minutes=40), "counts": Counts(100, 90, 0)},
            False,
        ),
        ({"expires_within": "1h"}, None, {"expires_at": NOW + timedelta(hours=2)}, False),
        ({"expires_within": "1h"}, None, {"expires_at": None}, False),
        ({"progress_below": 0.5}, None, {"counts": Counts(0, 0, 0)}, False),
        ({"progress_below": 0.5}, None, {"counts": None}, False),
        (
            {"failure_ratio_above": 0.2, "min_requests": 50},
            None,
            {"counts": Counts(200, 80, 40)},
            True,
        ),
        (
            {"failure_ratio_above": 0.2, "min_requests": 50},
            None,
            {"counts": Counts(200, 4, 4)},
            False,
        ),
        ({"failure_ratio_above": 0.2}, None, {"counts": Counts(200, 8, 2)}, False),  # exactly .2
        ({"failure_ratio_above": 0.2}, None, {"counts": Counts(200, 7, 3)}, True),
        ({"failure_ratio_above": 0.2}, None, {"counts": Counts(200, 5, 4)}, False),  # 9 < 10
        ({"status_in": ["finalizing"]}, None, {"status": "finalizing"}, True),
        ({"status_in": ["finalizing"]}, None, {}, False),
    ],
)
def test_condition_table(
    when: dict[str, Any], cost: str | None, fields: dict[str, Any], expected: bool
) -> None:
    """Each condition holds exactly where the contract says."""
    assert holds(when, cost, **fields) is expected


@pytest.mark.parametrize(
    "status", ["completed", "cancelling", "cancelled", "failed", "expired", "queued_for_gpu", None]
)
def test_only_active_batches_by_default(status: str | None) -> None:
    """Without status_in, terminal, cancelling and unknown statuses are never judged."""
    assert not holds({"age_above": "1s"}, status=status)


def test_status_in_opens_other_statuses() -> None:
    """status_in can point a policy (say an alert) at terminal batches."""
    assert holds(
        {"status_in": ["completed"], "failure_ratio_above": 0.5},
        status="completed",
        counts=Counts(10, 0, 10),
    )


@pytest.mark.parametrize(
    ("match", "fields", "expected"),
    [
        ({"provider": "deepinfra"}, {}, True),
        ({"provider": "openai"}, {}, False),
        ({"model": "meta-llama/*"}, {}, True),
        ({"model": "gpt-*"}, {}, False),
        ({"model": "meta-llama/*"}, {"model": None}, False),
        ({"metadata": {"team": "research"}}, {"metadata": {"team": "research", "x": "1"}}, True),
        ({"metadata": {"team": "research"}}, {"metadata": {"team": "ops"}}, False),
        ({"metadata": {"team": "research"}}, {"metadata": None}, False),
    ],
)
def test_match(match: dict[str, Any], fields: dict[str, Any], expected: bool) -> None:
    """match narrows by provider, model glob and metadata pairs."""
    p = policy({"age_above": "1s"}, match=match)
    assert (judge(p, Facts(view(**fields), None, NOW)) is not None) is expected


def test_first_matching_policy_acts() -> None:
    """Policies are tried in order; the verdict names the first that holds and what it saw."""
    policies = [
        Policy.model_validate({"name": "never", "when": {"age_above": "1d"}, "action": "cancel"}),
        Policy.model_validate({"name": "alert", "when": {"cost_usd_above": 1}, "action": "alert"}),
        Policy.model_validate({"name": "cap", "when": {"cost_usd_above": 2}, "action": "cancel"}),
    ]
    verdict = evaluate(policies, Facts(view(), Decimal("6.5"), NOW)).verdict
    assert verdict is not None
    assert (verdict.policy, verdict.action) == ("alert", "alert")
    assert verdict.observed == {"cost_usd_above": 6.5}
    assert evaluate(policies, Facts(view(), Decimal("0.5"), NOW)).verdict is None


def test_evaluation_is_pure() -> None:
    """The same facts give the same verdict, however often asked; the time is the one
    in the facts (no clock is read), and the clocks handed in are not changed."""
    p = [policy({"cost_usd_above": 1, "age_above": "10m"}, **{"for": "5m"})]
    pending = {p[0].name: NOW - timedelta(minutes=6)}
    facts = Facts(view(), Decimal(3), NOW)
    first = evaluate(p, facts, pending)
    assert first.verdict is not None and first.verdict.policy == p[0].name
    assert first.verdict.observed["held_for"] == 360
    assert all(evaluate(p, facts, pending) == first for _ in range(3))
    assert pending == {p[0].name: NOW - timedelta(minutes=6)}
    earlier = evaluate(p, Facts(view(), Decimal(3), NOW - timedelta(minutes=2)), pending)
    assert earlier.verdict is None and earlier.pending == pending


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ({}, "at least one condition"),
        ({"min_requests": 5}, "at least one condition"),
        ({"cost_usd_abov": 5}, "Extra inputs"),
        ({"progress_below": 1.5}, "less than or equal"),
        ({"age_above": "soon"}, "invalid duration"),
        ({"cost_usd_above": -1}, "greater than or equal"),
    ],
)
def test_bad_when_is_refused(when: dict[str, Any], message: str) -> None:
    """Schemas are strict: typos, empty and out-of-range conditions are errors."""
    with pytest.raises(ValidationError, match=message):
        policy(when)


def test_every_condition_is_a_when_field_and_vice_versa() -> None:
    """The registry and the schema agree, so no condition is silently ignored."""
    modifiers = {"min_requests", "status_in", "failure_ratio_confidence", "finalizing_allowance"}
    fields = set(When.model_fields) - modifiers
    assert fields == set(CONDITIONS)


def test_describe_reads_like_the_config() -> None:
    """check-config shows policies as written, durations included."""
    p = policy({"expires_within": "1h", "progress_below": 0.5}, match={"provider": "deepinfra"})
    assert describe(p) == "p: cancel when provider=deepinfra, expires_within=1h, progress_below=0.5"


@pytest.mark.parametrize(
    ("failed", "finished", "holds_raw", "holds_wilson"),
    [
        (3, 10, True, False),  # 30 % of 10: could well be chance
        (60, 200, True, True),  # 30 % of 200: the lower bound is still above 20 %
        (25, 100, True, False),
        (1, 100, False, False),
    ],
)
def test_failure_ratio_confidence(
    failed: int, finished: int, holds_raw: bool, holds_wilson: bool
) -> None:
    """With failure_ratio_confidence the Wilson lower bound is judged, so small samples
    with a high raw ratio do not trigger."""
    counts = Counts(1000, finished - failed, failed)
    raw = {"failure_ratio_above": 0.2}
    assert holds(raw, counts=counts) is holds_raw
    assert holds(raw | {"failure_ratio_confidence": 0.95}, counts=counts) is holds_wilson


@pytest.mark.parametrize(
    ("failed", "finished", "confidence", "low", "high"),
    [(60, 200, 0.95, 0.245, 0.255), (3, 10, 0.95, 0.12, 0.13), (0, 50, 0.95, 0.0, 0.0001)],
)
def test_wilson_lower_bound(
    failed: int, finished: int, confidence: float, low: float, high: float
) -> None:
    """The one-sided Wilson lower bound, against figures worked out by hand."""
    from watchdog.core.policies import wilson_lower

    assert low <= wilson_lower(failed, finished, confidence) <= high


def test_time_triggers() -> None:
    """When age_above and expires_within start to hold, for adaptive polling."""
    from watchdog.core.policies import time_triggers

    p = policy({"age_above": "2h", "expires_within": "1h"})
    v = view()
    assert time_triggers(p, v) == [
        v.created_at + timedelta(hours=2),
        v.expires_at - timedelta(hours=1),
    ]  # type: ignore[operator]
    assert time_triggers(policy({"cost_usd_above": 1}), v) == []
