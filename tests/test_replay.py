"""`replay`: history the daemon recorded (a real run against the simulator, 60 batches
over 15 ticks) judged again — with the same config it reproduces every decision; with a
stricter cost cap it reports the extra cancels and what they save, checked by hand."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import LLAMA_PRICE, Harness
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)
from watchdog.app import replay
from watchdog.settings import Settings

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
CENT = {"input_tokens": 200_000, "output_tokens": 80_000}  # $0.01 a request
TOTAL, SPENDERS, HEALTHY, TICKS = 100_000, 20, 40, 15


def cap(dollars: int) -> list[dict[str, Any]]:
    when = {"cost_usd_above": dollars}
    return [{"name": f"cap-{dollars}", "match": {"model": "meta-llama/*"}, "when": when,
             "action": "cancel"}]  # fmt: skip


def rate(j: int) -> float:
    return 0.1 * (j + 1)  # requests a second: $0.06 (j+1) a minute


async def recorded_run(h: Harness, dry_run: bool = False) -> None:
    """The daemon with a $5 cap, polling 60 batches once a minute for 15 minutes."""
    h.configure(policies=cap(5), dry_run=dry_run)
    for j in range(SPENDERS):
        h.sim.simulator.add(f"batch_s{j:02d}", model=LLAMA, total=TOTAL, rate=rate(j), **CENT)
    for i in range(HEALTHY):
        h.sim.simulator.add(f"batch_h{i:02d}", model=LLAMA, total=TOTAL, rate=0.001, **CENT)
    await h.track(*h.sim.simulator.batches)
    for k in range(TICKS):
        await h.tick(advance=60 if k else 0)


def first_over(j: int, dollars: int) -> int | None:
    """By hand: the first poll (minute k) at which spender j has spent more than the cap."""
    for k in range(TICKS):
        if int(rate(j) * 60 * k) * Decimal("0.01") > dollars:
            return k
    return None


async def judged_again(h: Harness, db_url: str, dollars: int) -> dict[str, Any]:
    settings = Settings(
        database_url=db_url,
        providers={"sim": {"base_url": h.sim.url}},
        pricing=[LLAMA_PRICE],
        policies=cap(dollars),
    )
    now = h.clock.now()
    return await replay(settings, now - timedelta(days=1), now)


async def test_the_same_config_reproduces_every_decision(harness: Harness, db_url: str) -> None:
    h = harness
    await recorded_run(h)
    report = await judged_again(h, db_url, 5)
    lines = {line["batch_id"]: line for line in report["batches"]}
    assert len(lines) == SPENDERS + HEALTHY
    cancelled = {b for b, line in lines.items() if line["recorded"]}
    assert cancelled == {f"batch_s{j:02d}" for j in range(SPENDERS) if first_over(j, 5)}
    assert {line["change"] for line in lines.values()} == {"unchanged"}
    for b in cancelled:
        assert lines[b]["replayed"]["at"] == lines[b]["recorded"]["at"]
        assert lines[b]["replayed"]["policy"] == "cap-5"
    totals = report["totals"]
    assert (totals["newly_cancelled"], totals["no_longer_cancelled"]) == (0, 0)
    assert totals["saved_usd"] == 0 and totals["at_risk_usd"] == 0


async def test_a_dry_runs_decisions_are_what_is_replayed(harness: Harness, db_url: str) -> None:
    """A dry run sent no cancel: its decisions (policy_matched, dry_run) are what the
    same config reproduces, and nothing says its history was cut short."""
    h = harness
    await recorded_run(h, dry_run=True)
    report = await judged_again(h, db_url, 5)
    lines = {line["batch_id"]: line for line in report["batches"]}
    decided = {b for b, line in lines.items() if line["recorded"]}
    assert decided == {f"batch_s{j:02d}" for j in range(SPENDERS) if first_over(j, 5)}
    assert all(lines[b]["recorded"]["dry_run"] for b in decided)
    assert {line["change"] for line in lines.values()} == {"unchanged"}
    assert all(line["note"] is None for line in lines.values())
    assert sum(h.sim.calls(b, "cancel") for b in h.sim.simulator.batches) == 0


async def test_a_stricter_cap_reports_the_extra_cancels_and_savings(
    harness: Harness, db_url: str
) -> None:
    h = harness
    await recorded_run(h)
    report = await judged_again(h, db_url, 2)
    lines = {line["batch_id"]: line for line in report["batches"]}
    expected_saving = Decimal(0)
    for j in range(SPENDERS):
        line, at2, at5 = lines[f"batch_s{j:02d}"], first_over(j, 2), first_over(j, 5)
        if at2 is None:
            assert line["change"] == "unchanged" and line["replayed"] is None
            continue
        spent = int(rate(j) * 60 * at2) * Decimal("0.01")
        saves = (TOTAL * Decimal("0.01")) - spent  # the projection less what was spent
        assert line["replayed"]["cost_usd"] == pytest.approx(float(spent))
        assert line["replayed"]["saves_usd"] == pytest.approx(float(saves))
        if at5 is None:
            assert line["change"] == "newly_cancelled"
            expected_saving += saves
        else:
            assert line["change"] == ("earlier" if at2 < at5 else "unchanged")
            old = TOTAL * Decimal("0.01") - int(rate(j) * 60 * at5) * Decimal("0.01")
            assert line["recorded"]["saved_usd"] == pytest.approx(float(old))
            expected_saving += saves - old if at2 < at5 else 0
    newly = [j for j in range(SPENDERS) if first_over(j, 2) is not None and not first_over(j, 5)]
    assert report["totals"]["newly_cancelled"] == len(newly) > 0
    assert report["totals"]["saved_usd"] == pytest.approx(float(expected_saving))
    assert report["totals"]["no_longer_cancelled"] == 0
    assert all(lines[f"batch_h{i:02d}"]["change"] == "unchanged" for i in range(HEALTHY))


async def test_replay_through_the_cli_and_its_bad_input(cli: Cli) -> None:  # noqa: F811
    """Read-only, one line for a bad --since; an empty history is said so."""
    result = await cli("replay", "--since", "1d")
    assert result.code == 0, result.err
    assert "no batch would be judged differently" in result.out
    assert "0 batches since" in result.out
    bad = await cli("replay", "--since", "last tuesday")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "last tuesday" in bad.err


def daemon_steps(view: Any, samples: list[Any], judging: Any, every: Any, until: Any) -> Any:
    """The reference: every poll through the daemon's own ``observe``, its row written
    back as the store would, and the decisions' hold rules."""
    from dataclasses import fields

    from watchdog.core.decisions import candidate_of, hold_reason
    from watchdog.core.observe import observe
    from watchdog.core.pricing import projected_cost
    from watchdog.core.rows import Tracked
    from watchdog.views.replay import Step, _polls

    names = {f.name for f in fields(Tracked)}
    tracked = Tracked(view, None, None, 0, None, None, None, 0, None, None, None)
    steps = []
    for at, sample in _polls(samples, every, until):
        obs = observe(tracked, sample.wire, at, judging)
        written = {k: v for k, v in obs.change.set().items() if k in names}
        if "pending" in written:
            written["pending"] = written["pending"] or {}
        tracked = obs.after.copy_with(**written)
        verdict, held = obs.verdict, None
        if verdict is not None and verdict.action == "cancel":
            exempt = judging.rules.safety.exempt_metadata
            held = hold_reason(candidate_of(tracked, verdict.policy, exempt, at))
        cancel = verdict is not None and verdict.action == "cancel" and held is None
        projected = projected_cost(obs.cost, tracked.view.counts, 1)
        steps.append(Step(at, tracked.view.status, verdict, cancel, held, obs.cost, projected))
        if cancel:
            break
    return steps


def test_replay_judges_every_poll_as_the_daemon_does() -> None:
    """Replay's judging (the daemon's facts, evaluate and hold rules, without the row
    and events a poll writes) gives exactly the steps of polling through the daemon's
    own ``observe``; and polls that see the same answer again, which take the last
    verdict until a clock-driven condition or a ``for:`` clock can flip, change none
    of them: random timelines under policies of every clock-driven kind."""
    import random
    from datetime import UTC, datetime, timedelta

    from watchdog.core.models import BatchObject, BatchView
    from watchdog.core.observe import Judging
    from watchdog.settings import Settings
    from watchdog.views.replay import Sample, fresh, judge, usage_wire

    rng = random.Random(11)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    policies = [
        {"name": "old", "when": {"age_above": "5h", "progress_below": 0.5}, "action": "cancel"},
        {"name": "late", "when": {"expires_within": "3h"}, "action": "alert"},
        {"name": "stuck", "when": {"stalled_for": "40m"}, "action": "cancel", "for": "10m"},
        {"name": "cap", "when": {"cost_usd_above": 40}, "for": "15m", "action": "cancel"},
    ]
    settings = Settings(
        poll_interval="60s",
        providers={"p": {"base_url": "https://x.example/v1"}},
        pricing=[{"model": "m*", "input": 1, "output": 1}],
        policies=policies,
        dry_run=rng.random() < 0.5,
    )
    judging = Judging(settings.rules(), settings.cadence)
    for case in range(200):
        created = t0 - timedelta(hours=rng.uniform(0, 6))
        view = BatchView("p", f"b{case}", None, model="m1", created_at=created,
                         expires_at=created + timedelta(hours=8))  # fmt: skip
        samples, done, at = [], 0, t0
        for _ in range(rng.randrange(1, 6)):
            at += timedelta(minutes=rng.uniform(1, 90))
            done += rng.choice([0, 0, 50, 200])
            wire = {"id": view.batch_id, "status": "in_progress", "model": "m1",
                    "created_at": int(created.timestamp()),
                    "expires_at": int((created + timedelta(hours=8)).timestamp()),
                    "request_counts": {"total": 1000, "completed": min(done, 1000), "failed": 0},
                    "usage": usage_wire(done * 100_000, 0, cached=0, reasoning=0)}  # fmt: skip
            samples.append(Sample.of(at, "p", BatchObject.model_validate(wire)))
        until = at + timedelta(hours=rng.uniform(0, 4))
        every = settings.poll_interval
        reference = daemon_steps(fresh(view).view, samples, judging, every, until)
        slow = judge(fresh(view), samples, judging, every=every, until=until, fast=False)
        quick = judge(fresh(view), samples, judging, every=every, until=until)
        assert slow == reference, case
        assert quick == reference, case
