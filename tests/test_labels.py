"""Labels that mean something: the ones ``track --label`` and the API give a batch are
matched by policies and budgets (``match: {labels: …}``), grouped on (``labels.KEY``)
by budgets and the report, and shown on the page — through real ticks, both databases."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import Harness
from tests.test_budgets import DOLLAR_FIFTH
from tests.test_engine import LLAMA
from watchdog.core.budgets import Budget
from watchdog.views.report import Report, check_by

CAP_FOR_RESEARCH = [
    {
        "name": "research-cap",
        "match": {"labels": {"team": "research"}},
        "when": {"cost_usd_above": 5},
        "action": "cancel",
    }
]


async def track(h: Harness, batch_id: str, team: str | None) -> None:
    labels = {"team": team} if team else {}
    await h.store.tracking.track("sim", batch_id, labels, h.clock.now())


async def test_a_policy_matches_the_labels_we_gave(harness: Harness) -> None:
    """Two batches over the cap: only the one labelled team=research is cancelled; the
    label survives every poll (the wire knows nothing of it)."""
    h = harness
    h.configure(policies=CAP_FOR_RESEARCH)
    for batch_id in ("batch_ours", "batch_theirs"):
        h.sim.simulator.add(batch_id, total=300, rate=1, model=LLAMA, **DOLLAR_FIFTH)
    await track(h, "batch_ours", "research")
    await track(h, "batch_theirs", None)
    await h.tick(advance=60)
    await h.tick(advance=60)
    assert h.sim.calls("batch_ours", "cancel") == 1
    assert h.sim.calls("batch_theirs", "cancel") == 0
    assert (await h.row("batch_ours"))["labels"] == {"team": "research"}


async def test_a_budget_groups_on_a_label(harness: Harness) -> None:
    """``group_by: [labels.team]``: one group per team, each with its own spend; a batch
    without the label is the group with an empty value."""
    h = harness
    budget = {"name": "per-team", "limit_usd": 1000, "window": "1d", "group_by": ["labels.team"]}
    h.configure(policies=[], budgets=[budget])
    teams = {"b_r1": "research", "b_r2": "research", "b_o1": "ops", "b_x": None}
    for batch_id, team in teams.items():
        h.sim.simulator.add(batch_id, total=300, rate=1, model=LLAMA, **DOLLAR_FIFTH)
        await track(h, batch_id, team)
    await h.tick()
    assert h.engine is not None
    groups = {a.group: a.batches for a in h.engine.budgeting.book.last}
    assert groups == {("research",): 2, ("ops",): 1, ("",): 1}


async def test_the_report_and_the_page_show_labels(harness: Harness) -> None:
    from watchdog.views.page import Status, render_page

    h = harness
    h.configure(policies=[])
    for batch_id, team in {"b_1": "research", "b_2": "ops", "b_3": "research"}.items():
        h.sim.simulator.add(batch_id, total=300, rate=1, model=LLAMA, **DOLLAR_FIFTH)
        await track(h, batch_id, team)
    await h.tick()
    report = Report(check_by("labels.team"), h.clock.now() - timedelta(days=1))
    async for row in h.store.reads.report_rows(h.clock.now() - timedelta(days=1)):
        report.add(row)
    assert {line.group: line.batches for line in report.rows()} == {"ops": 1, "research": 2}
    shown = await h.store.reads.some_batches(10, h.clock.now() - timedelta(days=1))
    html = render_page(Status(now=h.clock.now(), batches=shown))
    assert "label.team=research" in html and "label.team=ops" in html


@pytest.mark.parametrize(
    ("value", "valid"),
    [("labels.team", True), ("labels.", False), ("label.team", False), ("metadata.x", True)],
)
def test_grouping_paths(value: str, valid: bool) -> None:
    fields: dict[str, Any] = {"name": "b", "limit_usd": 1, "window": "1d", "group_by": [value]}
    if valid:
        Budget.model_validate(fields)
        assert check_by(value) == value
    else:
        valid_ones = re.escape("valid: provider, model, metadata.KEY, labels.KEY")
        with pytest.raises(ValidationError, match=valid_ones):
            Budget.model_validate(fields)
        with pytest.raises(ValueError, match=re.escape("labels.KEY")):
            check_by(value)
