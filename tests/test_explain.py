"""`batch-watchdog explain ID`: each policy and budget on one tracked batch, every
condition against its threshold, the exemption and switches, and what the next tick
will do; through the CLI on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import LLAMA, SPENDER
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)

SPEND = {"input_tokens": 2000, "output_tokens": 1000}  # $0.00011 a request


async def test_explain_says_why_and_what_next(cli: Cli, clock: Any) -> None:  # noqa: F811
    clock.t = time.time()
    sim = cli.sim.simulator
    # $9.90 spent: over the $5 cap, but exempt (metadata watchdog=off).
    sim.add("batch_vip", metadata={"watchdog": "off", "team": "research"}, **SPENDER)
    sim.add("batch_cheap", model=LLAMA, total=1000, rate=1, **SPEND)
    sim.add("batch_new", model=LLAMA, total=1000, rate=1)
    cli.write_config(
        "budgets:\n  - {name: research, match: {metadata: {team: research}}, limit_usd: 5}\n"
    )
    for batch_id in ("batch_vip", "batch_cheap", "batch_new"):
        assert (await cli("track", batch_id, "--provider", "sim")).code == 0
    r = await cli("explain", "batch_new", "--json")
    assert r.code == 0, r.err
    unpolled = json.loads(r.out)
    (cap,) = unpolled["policies"][0]["conditions"]
    assert cap["observed"] is None and cap["unknown"] == "no usage yet, or no price for the model"
    assert (await cli("run", "--once")).code == 0

    r = await cli("explain", "batch_vip", "--json")
    assert r.code == 0, r.err
    vip = json.loads(r.out)
    (cap,) = vip["policies"][0]["conditions"]
    assert (cap["condition"], cap["threshold"], cap["observed"], cap["holds"]) == (
        "cost_usd_above",
        5.0,
        9.9,
        True,
    )
    assert vip["exempt"] == "metadata watchdog=off"
    assert vip["next_tick"] == "hold the cancel from cost-cap: exempt: metadata watchdog=off"
    assert vip["budgets"][0]["state"] == "over" and vip["budgets"][0]["this_batch_chosen"] is False

    text = (await cli("explain", "batch_cheap")).out
    assert "cost-cap (cancel): applies yes; does not hold" in text
    assert "cost_usd_above $5.0000: observed $0.0000 (does not hold)" in text
    assert "next tick: poll it; no policy holds" in text
    assert sim.calls["batch_vip"]["cancel"] == 0


async def test_explain_refuses_bad_input_in_one_line(cli: Cli) -> None:  # noqa: F811
    unknown = await cli("explain", "batch_nobody")
    assert unknown.code == 2 and unknown.err == "error: batch 'batch_nobody' is not tracked\n"
    bad = await cli("explain", "../etc/passwd")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "invalid batch id" in bad.err
