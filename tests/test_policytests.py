"""`batch-watchdog test-policies`: the shipped example holds, a wrong expectation fails
with what was observed, a malformed file is a config error; `for:` clocks run across
polls as in the daemon. No network, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog.cli import main
from watchdog.views.policytests import load, run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "policies.test.yaml"

INLINE = """
config:
  poll_interval: 60s
  providers: {p: {base_url: "https://api.example.com/v1"}}
  pricing: [{model: "m*", input: 1, output: 1}]
  policies:
    - {name: stuck-cap, when: {cost_usd_above: 1}, for: 2m, action: cancel}
batches:
  - id: batch_a
    provider: p
    model: m1
    timeline:
      - {at: 0s, status: in_progress, counts: {total: 100, completed: 10}, usage: {input: 2000000}}
expect:
  - {at: 0s, batch: batch_a, nothing: true}
  - {at: 60s, batch: batch_a, nothing: true}
  - {at: 120s, batch: batch_a, policy: stuck-cap, cancel: true}
"""


def test_the_shipped_example_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-policies", str(EXAMPLE)]) == 0
    assert "9/9 hold" in capsys.readouterr().out


def test_a_wrong_expectation_fails_naming_what_was_observed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = EXAMPLE.read_text().replace(
        "config: watchdog.example.yaml", f"config: {EXAMPLE.parent / 'watchdog.example.yaml'}"
    )
    wrong = text.replace(
        "{at: 60s, batch: batch_flaky, policy: failing, cancel: true}",
        "{at: 60s, batch: batch_flaky, policy: cost-cap, cancel: true}",
    )
    assert wrong != text
    (tmp_path / "wrong.yaml").write_text(wrong)
    assert main(["test-policies", str(tmp_path / "wrong.yaml")]) == 1
    out = capsys.readouterr().out
    assert (
        "batch_flaky at 60s: expected policy cost-cap, cancel true, observed policy failing" in out
    )
    assert "8/9 hold" in out


def test_a_for_clock_runs_across_polls(tmp_path: Path) -> None:
    """Over its cap from t=0, with `for: 2m`: nothing at 0 s and 60 s, cancelled at 120 s
    (the clock is carried from poll to poll, as the daemon stores it)."""
    (tmp_path / "t.yaml").write_text(INLINE)
    assert main(["test-policies", str(tmp_path / "t.yaml")]) == 0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("config: {}\nbatches: []\nexpect: []\n", "batches: List should have at least 1 item"),
        (INLINE.replace("batch: batch_a, nothing", "batch: batch_b, nothing"), "unknown batch"),
        (INLINE.replace("for: 2m", "for: soon"), "config: policy 'stuck-cap': for: invalid"),
        (
            INLINE.replace("{at: 0s, batch: batch_a, nothing: true}", "{at: 0s, batch: batch_a}"),
            "needs policy, action, cancel or nothing",
        ),
        (
            INLINE.replace("{at: 120s, batch: batch_a,", "{at: 3000d, batch: batch_a,"),
            "the last expectation (3000d) needs 4,320,000 polls of 1 batches every 1m",
        ),
        ("[" * 50_000, "invalid YAML: nested deeper than can be read"),
    ],
)
def test_a_malformed_test_file_exits_78_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    (tmp_path / "t.yaml").write_text(text)
    assert main(["test-policies", str(tmp_path / "t.yaml")]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


def test_a_missing_file_exits_78(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test-policies", "/nonexistent/tests.yaml"]) == 78
    assert "policy test file not found" in capsys.readouterr().err


def test_a_point_far_past_the_last_expectation_is_not_judged() -> None:
    """Polls stop at the last expectation: a timeline point at 3000d adds no polls."""
    from datetime import UTC, datetime, timedelta

    from watchdog.core.models import BatchObject
    from watchdog.views.replay import Sample, _polls

    t0, wire = datetime(2026, 1, 1, tzinfo=UTC), BatchObject(id="b", status="in_progress")
    samples = [Sample.of(t0, "p", wire), Sample.of(t0 + timedelta(days=3000), "p", wire)]
    until = t0 + timedelta(minutes=2, seconds=1)
    polls = [at for at, _ in _polls(samples, timedelta(minutes=1), until)]
    assert polls == [t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)]


def test_an_input_file_makes_the_estimate(tmp_path: Path) -> None:
    """A batch's ``input_file`` is what its estimate says from t=0: without it, the
    estimated condition cannot hold."""
    test = tmp_path / "est.yaml"
    body = """
config:
  pricing: [{model: "m*", input: 1, output: 2}]
  policies: [{name: est, when: {estimated_cost_usd_above: 5}, action: cancel}]
  providers: {p: {base_url: "http://127.0.0.1:1/v1"}}
batches:
  - {id: b_big, provider: p, model: m1, timeline: [{at: 0s, status: validating}],
     input_file: {requests: 10, input_tokens: 1000000, output_tokens: 3000000}}
  - {id: b_none, provider: p, model: m1, timeline: [{at: 0s, status: validating}]}
expect:
  - {at: 0s, batch: b_big, policy: est, cancel: true}
  - {at: 0s, batch: b_none, policy: est, cancel: true}
"""
    test.write_text(body)
    failures = run(*load(test))
    assert len(failures) == 1 and "b_none at 0s" in failures[0], failures
