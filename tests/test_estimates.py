"""Estimates from input files: the pure reading of JSONL lines against hand-computed
figures, and whole ticks against the simulator's files on both databases."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SQLITE_ONLY, Harness
from watchdog.core import estimates
from watchdog.core.budgets import Budget, Spending, assess, spending_of
from watchdog.core.estimates import (
    Estimate,
    EstimateSettings,
    Range,
    Share,
    Tally,
    estimate_error,
    estimated_cost,
    read_request,
)
from watchdog.core.models import BatchView, Counts
from watchdog.core.policies import Facts, Policy, judge
from watchdog.core.pricing import Price
from watchdog.core.rows import Spent, Tracked
from watchdog.providers.dialects import DIALECTS, inward
from watchdog.sim.simulator import Fault
from watchdog.views.explain import explained, explanation_text
from watchdog.views.report import Report

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
# $2.50 in, $10 out per 1M: a simulated request of 1,000 input tokens asking for up to
# 1,024 output tokens is $0.0025 to $0.01274.
PRICE = {"model": "meta-llama/*", "input": 2.5, "output": 10}
CAP = [{"name": "estimate-cap", "when": {"estimated_cost_usd_above": 5}, "action": "cancel"}]


def line(body: dict[str, Any], url: str = "/v1/chat/completions") -> bytes:
    return json.dumps({"custom_id": "r", "method": "POST", "url": url, "body": body}).encode()


@pytest.mark.parametrize(
    ("body", "url", "model", "text_bytes", "messages", "max_output", "choices"),
    [
        # Two messages: their text; the framing is added when counting.
        ({"model": "m", "messages": [{"role": "system", "content": "abcd"},
                                      {"role": "user", "content": "héllo"}], "max_tokens": 7},
         "/v1/chat/completions", "m", 4 + 6, 2, 7, 1),
        # Content as parts: the text parts only, an image is not text.
        ({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "12345678"},
            {"type": "image_url", "image_url": {"url": "data:..."}}]}],
          "max_completion_tokens": 100, "n": 3},
         "/v1/chat/completions", "m", 8, 1, 100, 3),
        # The Responses API: input and instructions, max_output_tokens.
        ({"model": "m", "input": "abcdefgh", "instructions": "xy", "max_output_tokens": 50},
         "/v1/responses", "m", 10, 0, 50, 1),
        # Completions: a list of prompts; no limit given (the model's default bounds it).
        ({"model": "m", "prompt": ["ab", "cd"]}, "/v1/completions", "m", 4, 0, None, 1),
        # Embeddings write nothing.
        ({"model": "e", "input": ["abcd", "efgh"]}, "/v1/embeddings", "e", 8, 0, 0, 1),
        # No model in the line: the batch's is used.
        ({"messages": [{"role": "user", "content": "ab"}]}, "/v1/chat/completions", "", 2, 1,
         None, 1),
    ],
)  # fmt: skip
def test_a_line_is_measured(
    body: dict[str, Any], url: str, model: str, text_bytes: int, messages: int,
    max_output: int | None, choices: int,
) -> None:  # fmt: skip
    request = read_request(line(body, url))
    assert request is not None
    assert (request.model, request.text_bytes, request.messages) == (model, text_bytes, messages)
    assert (request.max_output, request.choices) == (max_output, choices)


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"custom_id": "r"}', b'{"body": "text"}', b'{"body": '],
)
def test_what_is_not_a_request_is_malformed(raw: bytes) -> None:
    assert read_request(raw) is None


def small_file() -> bytes:
    """Three requests and a broken line, by hand: 12 bytes (3 tokens at 4 bytes a token)
    + 2 messages' framing (9) = 12 tokens asking for 100; 8 bytes + 3 framing..."""
    return b"\n".join([
        line({"model": "a", "messages": [{"role": "system", "content": "x" * 4},
                                          {"role": "user", "content": "y" * 8}],
              "max_tokens": 100}),
        b"{broken",
        line({"model": "a", "messages": [{"role": "user", "content": "z" * 9}]}),
        b"",
        line({"model": "b", "prompt": "w" * 40, "max_tokens": 5, "n": 2}),
    ])  # fmt: skip


SAMPLES = Path(__file__).parent / "data" / "estimate_samples.json"


def test_the_heuristic_against_the_recorded_samples() -> None:
    """The README's figures: within 25 % of what the API counted (132 for 129, 14 for
    17); a change to the heuristic that moves them must update the README too."""
    found = []
    for sample in json.loads(SAMPLES.read_text())["samples"]:
        body = {"model": sample["model"], "messages": sample["messages"]}
        request = read_request(line(body))
        assert request is not None
        found.append((request.tokens(4.0), sample["prompt_tokens"]))
    assert found == [(132, 129), (14, 17)]
    assert all(abs(ours / theirs - 1) < 0.25 for ours, theirs in found)


def test_a_small_file_against_hand_computed_figures() -> None:
    settings = EstimateSettings(models=({"model": "b", "bytes_per_token": 2.0,
                                         "max_output_tokens": 0},))  # fmt: skip
    raw = small_file()
    whole = Tally(settings)
    whole.feed(raw)
    expected = whole.finish(NOW, "file-1")
    assert (expected.requests, expected.malformed, expected.bytes) == (3, 1, len(raw))
    # a: 12 bytes / 4 = 3 + 2 messages x 3 + 3 = 12 tokens; 9 bytes -> 3 + 1 x 3 + 3 = 9.
    # Output: 100, and the default 4,096 for the line that names no limit.
    assert expected.models["a"] == Share(requests=2, input_tokens=21, output_tokens=4196,
                                         defaulted=1)  # fmt: skip
    # b: 40 bytes at 2 bytes a token, no messages: 20 tokens; 5 tokens x 2 choices.
    assert expected.models["b"] == Share(requests=1, input_tokens=20, output_tokens=10)
    # However the file is cut into chunks, the same figures.
    for size in (1, 2, 3, 7, 64):
        tally = Tally(settings)
        for start in range(0, len(raw), size):
            tally.feed(raw[start : start + size])
        assert tally.finish(NOW, "file-1") == expected


def test_a_line_past_the_longest_is_dropped_as_it_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimates, "MAX_LINE", 150)
    tally = Tally(EstimateSettings())
    good = line({"model": "a", "prompt": "abcd"})
    tally.feed(good + b"\n" + b"x" * 80)
    tally.feed(b"y" * 80)  # past 150 bytes: dropped, not held
    assert len(tally._partial) == 0
    tally.feed(b"z" * 50 + b"\n" + good)
    found = tally.finish(NOW, None)
    assert (found.requests, found.malformed) == (2, 1)


def test_cost_range_at_the_batch_prices() -> None:
    estimate = Estimate(NOW, requests=3, models={
        "a": Share(2, 1_000_000, 2_000_000), "": Share(1, 1_000_000, 0)})  # fmt: skip
    prices = [Price(model="a", input=1, output=3), Price(model="batch-*", input=2, output=5)]
    found = estimated_cost(prices, "p", "batch-model", estimate)
    # a: $1 in, $6 out; the line without a model takes the batch's: $2 in.
    assert found == Range(Decimal(3), Decimal(9), 3)
    assert estimated_cost(prices, "p", None, estimate) is None  # "" has no price: unknown
    failed = Estimate(NOW, error="HTTP 403: no", file_id="f")
    assert estimated_cost(prices, "p", "batch-model", failed) is None
    error = estimate_error(found, Decimal("4.5"))
    assert error == {"estimated_low_usd": 3.0, "estimated_high_usd": 9.0, "cost_usd": 4.5,
                     "within_range": True, "cost_to_high": 0.5}  # fmt: skip


def test_an_estimate_is_kept_as_json_and_read_back() -> None:
    made = Estimate(NOW, file_id="f", bytes=10, requests=2, malformed=1,
                    models={"a": Share(2, 30, 40, 1)})  # fmt: skip
    assert Estimate.from_json(json.loads(json.dumps(made.as_json()))) == made
    failed = Estimate(NOW, file_id="f", error="timeout", temporary=True, attempts=2)
    back = Estimate.from_json(failed.as_json())
    assert back == failed and not back.settled  # a third try is due
    assert Estimate.from_json({**failed.as_json(), "attempts": 3}).settled  # type: ignore[union-attr]
    assert Estimate.from_json({"made_at": "garbage"}) is None
    assert Estimate.from_json(None) is None


def test_estimated_conditions_hold_while_validating() -> None:
    policy = Policy.model_validate({"name": "p", "action": "cancel", "when": {
        "estimated_cost_usd_above": 5, "estimated_requests_above": 100}})  # fmt: skip
    view = BatchView("sim", "b", "validating", LLAMA, None, None, None, None, None)
    assert judge(policy, Facts(view, None, NOW)) is None  # unknown never holds
    found = judge(policy, Facts(view, None, NOW, estimate=Range(Decimal(1), Decimal(6), 101)))
    assert found is not None
    assert found.observed == {"estimated_cost_usd_above": 6.0, "estimated_requests_above": 101}
    assert (
        judge(policy, Facts(view, None, NOW, estimate=Range(Decimal(1), Decimal(6), 100))) is None
    )


# Whole ticks: the simulator serves the files.


def validating(h: Harness, batch_id: str, total: int, **params: Any) -> None:
    params = {"validating_for": 7200, "input_file": "requests"} | params
    h.sim.simulator.add(batch_id, model=LLAMA, total=total, rate=10, **params)


async def test_a_validating_batch_over_the_cap_is_cancelled_on_its_first_tick(
    harness: Harness,
) -> None:
    """500 requests: $1.25 of input, up to $5.12 of output = $6.37 > $5; 100 requests
    ($1.27) stay. Both while validating, before a token was spent."""
    h = harness
    h.configure(policies=CAP, pricing=[PRICE])
    validating(h, "batch_big", 500)
    validating(h, "batch_small", 100)
    await h.track("batch_big", "batch_small")
    summary = await h.tick()
    assert summary.cancel_succeeded == 1 and h.sim.calls("batch_big", "cancel") == 1
    events = await h.store.journal.list_events("batch_big")
    matched = next(e for e in events if e["kind"] == "policy_matched")
    assert matched["detail"]["observed"] == {"estimated_cost_usd_above": 6.37}
    assert matched["to_status"] == "validating"
    big, small = await h.row("batch_big"), await h.row("batch_small")
    assert big["estimate"]["requests"] == 500 and big["estimate"]["malformed"] == 0
    assert big["estimate"]["models"][LLAMA] == {
        "requests": 500,
        "input_tokens": 500_000,
        "output_tokens": 512_000,
        "defaulted": 0,
    }
    assert big["cost_usd"] == 0  # nothing spent: the cancel came first
    assert small["cancel_policy"] is None and small["estimate"]["requests"] == 100
    await h.tick(60)  # made once: never read again
    assert h.sim.calls("file-batch_small", "file") == 1
    assert h.sim.calls("file-batch_big", "file") == 1


@SQLITE_ONLY
async def test_a_file_that_cannot_be_read_leaves_the_batch_judged_as_today(
    harness: Harness,
) -> None:
    """Refused (403), missing (404) or too big: one estimate_failed each, never read
    again; the other policies judge the batches as before."""
    h = harness
    age = [{"name": "too-old", "when": {"age_above": "1h"}, "action": "cancel"}]
    h.configure(policies=CAP + age, pricing=[PRICE], estimate={"max_file_bytes": "1MB"})
    validating(h, "batch_refused", 500, input_file="refused")
    validating(h, "batch_missing", 500, input_file="missing")
    validating(h, "batch_huge", 500)  # 2 MB
    validating(h, "batch_plain", 500, input_file="none")
    await h.track("batch_refused", "batch_missing", "batch_huge", "batch_plain")
    first = await h.tick()
    assert first.cancel_succeeded == 0 and first.poll_failed == 0
    failed = {}
    for batch_id in ("batch_refused", "batch_missing", "batch_huge"):
        events = await h.store.journal.list_events(batch_id)
        [one] = [e for e in events if e["kind"] == "estimate_failed"]
        failed[batch_id] = one["detail"]["error"]
    assert failed["batch_refused"].startswith("HTTP 403")
    assert failed["batch_missing"].startswith("HTTP 404")
    assert "over the 1000000 byte limit" in failed["batch_huge"]
    assert (await h.row("batch_plain"))["estimate"] is None  # names no file: nothing to read
    assert h.engine is not None
    scraped = h.engine.metrics.render().decode()
    assert 'watchdog_estimates_total{outcome="failed",provider="sim"} 3.0' in scraped
    second = await h.tick(3601)  # judged as today: too old, cancelled by age
    assert second.cancel_succeeded == 4
    for batch_id in ("batch_refused", "batch_missing", "batch_huge"):
        assert h.sim.calls(f"file-{batch_id}", "file") == 1
        kinds = [e["kind"] for e in await h.store.journal.list_events(batch_id)]
        assert kinds.count("estimate_failed") == 1


@SQLITE_ONLY
async def test_a_temporary_failure_is_tried_again_at_the_next_poll(harness: Harness) -> None:
    h = harness
    h.configure(policies=CAP, pricing=[PRICE])
    validating(h, "batch_big", 500)
    h.sim.simulator.faults.append(Fault("GET", "/files/", 503, times=1))
    await h.track("batch_big")
    first = await h.tick()
    assert first.cancel_succeeded == 0
    row = await h.row("batch_big")
    assert row["estimate"]["temporary"] and row["estimate"]["attempts"] == 1
    assert "estimate_failed" not in await h.kinds("batch_big")  # not said yet: not final
    second = await h.tick(60)
    assert second.cancel_succeeded == 1
    assert (await h.row("batch_big"))["estimate"]["requests"] == 500


@SQLITE_ONLY
async def test_malformed_lines_are_counted(harness: Harness) -> None:
    h = harness
    h.configure(policies=CAP, pricing=[PRICE])
    validating(h, "batch_odd", 11, input_file="malformed")
    await h.track("batch_odd")
    await h.tick()
    estimate = (await h.row("batch_odd"))["estimate"]
    assert (estimate["requests"], estimate["malformed"]) == (10, 1)


@SQLITE_ONLY
async def test_a_batch_waits_for_its_estimate_at_most_one_tick(harness: Harness) -> None:
    """With no time to wait, the first tick judges without it; the estimate is kept as
    it comes, and the next tick cancels."""
    h = harness
    h.configure(policies=CAP, pricing=[PRICE], estimate={"wait": "0s"})
    validating(h, "batch_big", 500)
    await h.track("batch_big")
    assert (await h.tick()).cancel_succeeded == 0
    for _ in range(200):  # the read goes on in the background
        if (await h.row("batch_big"))["estimate"] is not None:
            break
        await asyncio.sleep(0.02)
    assert (await h.tick(60)).cancel_succeeded == 1
    assert h.sim.calls("file-batch_big", "file") == 1


@SQLITE_ONLY
async def test_the_end_says_how_far_the_estimate_was(harness: Harness) -> None:
    """20 requests of 1,000 input and 500 output tokens: $0.15 spent, estimated $0.05
    to $0.2548 (20 x 1,024 output tokens)."""
    h = harness
    h.configure(policies=CAP, pricing=[PRICE])
    h.sim.simulator.add("batch_ok", model=LLAMA, total=20, rate=10, input_file="requests")
    await h.track("batch_ok")
    await h.tick()
    await h.tick(60)
    events = await h.store.journal.list_events("batch_ok")
    end = next(e for e in events if e["kind"] == "status_changed"
               and e["to_status"] == "completed")  # fmt: skip
    assert end["detail"]["estimate_error"] == {
        "estimated_low_usd": 0.05, "estimated_high_usd": 0.2548, "cost_usd": 0.15,
        "within_range": True, "cost_to_high": 0.5887}  # fmt: skip


# Budgets: a batch whose projection is unknown counts its estimate as committed.


def spending(batch_id: str, *, cost: str | None, done: int, estimated: str | None,
             age_h: float = 1, status: str = "in_progress") -> Spending:  # fmt: skip
    view = BatchView("sim", batch_id, status, LLAMA, {"team": "research"},
                     NOW - timedelta(hours=age_h), None, Counts(300, done, 0), None)  # fmt: skip
    return Spending(view, None if cost is None else Decimal(cost),
                    estimated=None if estimated is None else Decimal(estimated))  # fmt: skip


def test_budgets_count_an_estimate_where_the_projection_is_unknown() -> None:
    """$100 limit. Running and projected: $20 spent, $60 at completion (the estimate of
    $500 is not used once requests have finished). Validating: $0 spent, none finished,
    estimated up to $70 and $30. Unknown: no estimate. Committed $20 + $40 + $70 + $30 =
    $160: the newest estimated batches go first, the unknown one is never chosen."""
    found = assess([Budget(name="b", limit_usd=Decimal(100), action="cancel")], [
        spending("batch_projected", cost="20", done=100, estimated="500", age_h=4),
        spending("batch_est_old", cost="0", done=0, estimated="70", age_h=2),
        spending("batch_est_new", cost=None, done=0, estimated="30", age_h=1),
        spending("batch_unknown", cost=None, done=0, estimated=None, age_h=0.5),
    ], NOW)  # fmt: skip
    (one,) = found
    figures = one.figures()
    assert (figures.committed_usd, figures.committed_estimated_usd) == (160.0, 100.0)
    assert (figures.committed_projected_usd, figures.estimated) == (60.0, 2)
    assert figures.unknown_remaining == 1
    # Newest first: batch_est_new ($30 -> $130, still over), then batch_est_old (-> $60).
    assert [m.view.batch_id for m in one.chosen] == ["batch_est_new", "batch_est_old"]


def test_an_estimate_at_the_prices_of_the_day_reaches_the_budget() -> None:
    """spending_of costs the stored estimate at the given prices."""
    tracked = Tracked(view=BatchView("sim", "b", "validating", LLAMA),
                      cost_usd=None, matched_policy=None, poll_failures=0, last_error=None,
                      cancel_policy=None, cancel_requested_at=None, cancel_attempts=0,
                      cancel_outcome=None, pricing_missing_at=None, tracked_at=None,
                      estimate=Estimate(NOW, requests=2, models={
                          LLAMA: Share(2, 1_000_000, 100_000)}))  # fmt: skip
    prices = [Price.model_validate(PRICE)]
    assert spending_of(tracked, {}, NOW, prices).estimated == Decimal("3.5")
    assert spending_of(tracked, {}, NOW).estimated is None  # no price: unknown


def test_the_report_adds_up_the_estimates() -> None:
    """Two batches with estimates ($6.37 and $1.27 upper bounds at PRICE), one ended
    at $3.185 (half its bound); one without."""
    prices = (Price.model_validate(PRICE),)

    def spent(batch_id: str, status: str, cost: str | None, requests: int | None) -> Spent:
        estimate = None if requests is None else Estimate(NOW, requests=requests, models={
            LLAMA: Share(requests, requests * 1000, requests * 1024)})  # fmt: skip
        return Spent("sim", LLAMA, None, NOW, None if cost is None else Decimal(cost), None,
                     None, None, None, status=status, estimate=estimate)  # fmt: skip

    report = Report("provider", NOW, prices)
    report.add(spent("a", "completed", "3.185", 500))
    report.add(spent("b", "validating", None, 100))
    report.add(spent("c", "completed", "1", None))
    found = report.totals().as_dict()
    assert (found["estimated"], found["estimated_usd"], found["cost_to_estimate"]) == (
        2, 7.644, 0.5)  # fmt: skip


@SQLITE_ONLY
async def test_explain_shows_the_estimate_and_judges_by_it(harness: Harness) -> None:
    h = harness
    h.configure(policies=CAP, pricing=[PRICE], dry_run=True)
    validating(h, "batch_big", 500)
    validating(h, "batch_refused", 10, input_file="refused")
    await h.track("batch_big", "batch_refused")
    await h.tick()
    assert h.settings is not None
    ((tracked, next_poll),) = await h.store.tracking.find("batch_big", "sim")
    said = explained(h.settings, tracked, next_poll, [], False, h.clock.now())
    (cap,) = said.policies[0].conditions
    assert (cap.condition, cap.observed, cap.holds) == ("estimated_cost_usd_above", 6.37, True)
    estimate = said.as_dict()["estimate"]
    assert (estimate["requests"], estimate["low_usd"], estimate["high_usd"]) == (500, 1.25, 6.37)
    text = explanation_text(said)
    assert (
        "estimate: 500 requests (0 malformed), ~500,000 input tokens, output at most "
        "512,000 (0 at the model default): $1.2500 to $6.3700 [bytes_per_token]" in text
    )
    assert "hold the cancel from estimate-cap: dry run" in text
    ((refused, _),) = await h.store.tracking.find("batch_refused", "sim")
    text = explanation_text(explained(h.settings, refused, None, [], False, h.clock.now()))
    assert "estimate: not made: HTTP 403: You do not have access to this file." in text
    assert "estimated_cost_usd_above $5.0000: unknown (no estimate:" in text


@pytest.mark.parametrize(
    ("kind", "raw", "file_id"),
    [
        ("mistral", {"id": "b", "status": "QUEUED", "input_files": ["file-1"]}, "file-1"),
        # Several files: one part's estimate would pass for the whole; none is read.
        ("mistral", {"id": "b", "status": "QUEUED", "input_files": ["f1", "f2"]}, None),
        ("together", {"id": "b", "status": "VALIDATING", "input_file_id": "file-2"}, "file-2"),
        ("openai", {"id": "b", "status": "validating", "input_file_id": "file-3"}, "file-3"),
        ("anthropic", {"id": "b", "processing_status": "in_progress"}, None),
    ],
)
def test_each_kind_names_its_input_file(
    kind: str, raw: dict[str, Any], file_id: str | None
) -> None:
    assert inward(DIALECTS[kind], raw).get("input_file_id") == file_id
    assert (DIALECTS[kind].files is None) == (kind == "anthropic")


@SQLITE_ONLY
async def test_a_backlog_of_files_is_read_a_few_at_a_time(harness: Harness) -> None:
    """One slot: four reads queued at most; the other batches start at a later poll,
    and validating ones go first."""
    h = harness
    h.configure(policies=CAP, pricing=[PRICE], estimate={"concurrency": 1},
                poll_interval="60s")  # fmt: skip
    for i in range(4):
        h.sim.simulator.add(f"batch_run{i}", model=LLAMA, total=10, rate=0.001,
                            input_file="requests")  # fmt: skip
    for i in range(3):
        validating(h, f"batch_val{i}", 10)
    await h.track(*h.sim.simulator.batches)
    await h.tick()
    read = {b for b in h.sim.simulator.batches if h.sim.calls(f"file-{b}", "file")}
    assert len(read) == 4 and {"batch_val0", "batch_val1", "batch_val2"} <= read
    await h.tick(60)
    assert all(h.sim.calls(f"file-{b}", "file") == 1 for b in h.sim.simulator.batches)


def test_a_file_naming_many_models_stays_small() -> None:
    """Past 64 distinct model names (or a name longer than a column holds) the rest are
    counted together, without a price: what is stored stays small, the cost unknown."""
    tally = Tally(EstimateSettings())
    for n in range(70):
        tally.feed(line({"model": f"m{n}", "prompt": "abcd", "max_tokens": 1}) + b"\n")
    tally.feed(line({"model": "x" * 300, "prompt": "abcd", "max_tokens": 1}) + b"\n")
    found = tally.finish(NOW, "f")
    assert len(found.models) == 65 and found.models[estimates.OTHER].requests == 7
    prices = [Price(model="*", input=1, output=1)]
    assert estimated_cost(prices, "p", None, found) is None
