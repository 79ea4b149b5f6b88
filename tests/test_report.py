"""`batch-watchdog report`: spend, batches, cancels and savings per group and day, from
the database after a real run; totals are the sums of the rows; an unknown cost is
counted as unknown. Through the CLI on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest

from tests.conftest import LLAMA, SPENDER
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)

SPEND = {"input_tokens": 2000, "output_tokens": 1000}  # $0.00011 a request


async def test_report_groups_days_and_totals(cli: Cli, clock: Any) -> None:  # noqa: F811
    clock.t = time.time()  # created today, as the daemon's clock sees it
    sim = cli.sim.simulator
    # $9.90 when polled: over the $5 cap, cancelled; projected $22, so $12.10 saved.
    sim.add("batch_big", metadata={"team": "research"}, **SPENDER)
    sim.add("batch_small", model=LLAMA, age=100, total=1000, rate=1,
            metadata={"team": "ops"}, **SPEND)  # fmt: skip
    sim.add("batch_legacy", model=None, with_usage=False, total=100, rate=1)
    for batch_id in sim.batches:
        assert (await cli("track", batch_id, "--provider", "sim")).code == 0
    assert (await cli("run", "--once")).code == 0

    found = json.loads((await cli("report", "--json")).out)
    (row,) = found["rows"]
    assert (row["group"], row["batches"], row["unknown_cost"], row["cancels"]) == ("sim", 3, 1, 1)
    assert row["spend_usd"] == pytest.approx(9.9 + 0.011)
    assert row["saved_usd"] == pytest.approx(12.1)
    assert {k: v for k, v in found["totals"].items() if k not in ("day", "group")} == {
        k: v for k, v in row.items() if k not in ("day", "group")
    }

    by_team = (await cli("report", "--by", "metadata.team", "--csv")).out
    rows = list(csv.DictReader(io.StringIO(by_team)))
    assert [(r["group"], r["batches"], r["cancels"]) for r in rows] == [
        ("-", "1", "0"),
        ("ops", "1", "0"),
        ("research", "1", "1"),
        ("all", "3", "1"),
    ]
    table = (await cli("report", "--by", "policy")).out
    assert "cost-cap" in table and "(+1 unknown)" in table


async def test_report_refuses_a_bad_group_in_one_line(cli: Cli) -> None:  # noqa: F811
    bad = await cli("report", "--by", "team")
    assert bad.code == 2 and bad.err.count("\n") == 1
    assert "use one of provider, model, policy, metadata.KEY" in bad.err
    empty = await cli("report", "--since", "1d")
    assert empty.code == 0 and "no batches in the window" in empty.out
