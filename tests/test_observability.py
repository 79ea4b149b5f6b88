"""The dashboard and the alert rules, checked by the tools their users trust: promtool
checks the rules and fires each alert from input series; the PrometheusRule is the same
rules and passes the Kubernetes validation; every metric the dashboard and the rules
name is served on /metrics by a running daemon."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import SPENDER, Clock, Sim
from tests.daemons import Daemon, write_config
from tests.databases import fresh_postgres
from tests.tools import command

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
OPERATOR = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "batch-watchdog.json"
BIN = Path(sys.executable).parent


def promtool() -> str:
    """Installed by .ci/run (Debian's prometheus package); under CI its absence fails."""
    return command("promtool", package="prometheus")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=RULES.parent)


def test_promtool_checks_the_rules() -> None:
    result = run(promtool(), "check", "rules", RULES.name)
    assert result.returncode == 0 and "SUCCESS: 10 rules found" in result.stdout, result.stderr


def test_promtool_fires_each_alert_from_input_series() -> None:
    """rules.test.yml fires every alert once and a healthy daemon none."""
    tests = yaml.safe_load((RULES.parent / "rules.test.yml").read_text())
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = [t for case in tests["tests"] for t in case["alert_rule_test"]]
    fired = {t["alertname"] for t in cases if t["exp_alerts"]}
    assert fired == alerts
    result = run(promtool(), "test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    """Each alert's runbook_url points at its own heading in the README's Runbook."""
    readme = (ROOT / "README.md").read_text()
    runbook = readme[readme.index("\n## Runbook\n") :]
    runbook = runbook[: runbook.index("\n## ", 1)]
    headings = {h.strip().lower() for h in re.findall(r"^### (.+)$", runbook, re.M)}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert rule["annotations"]["runbook_url"] == f"README.md#{name.lower()}"
            assert name.lower() in headings, f"README: ### {name} under ## Runbook"


def test_the_prometheusrule_is_the_same_rules_and_validates() -> None:
    manifest = yaml.safe_load(OPERATOR.read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    validate = shutil.which("kubernetes-validate") or str(
        Path(os.sys.executable).parent / "kubernetes-validate"
    )
    result = subprocess.run([validate, "--strict", str(OPERATOR)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def named_metrics() -> dict[str, set[str]]:
    """The watchdog_* series each file's expressions name."""
    rules = yaml.safe_load(RULES.read_text())
    exprs = {"rules": [r["expr"] for g in rules["groups"] for r in g["rules"]]}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs["dashboard"] = [t["expr"] for p in panels for t in p["targets"]]
    return {
        k: {m for e in v for m in re.findall(r"\bwatchdog_[a-z_]+", e)} for k, v in exprs.items()
    }


def served(text: str) -> set[str]:
    """Every series name /metrics exports, with a histogram's and a counter's suffixes."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(f"{name}_total")
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


async def test_every_named_metric_is_served_by_a_running_daemon(tmp_path: Path, sim: Sim) -> None:
    sim.simulator.add("batch_1", total=100, rate=1)
    budgets = "budgets:\n  - {name: all, limit_usd: 100}\n"
    config = write_config(tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{tmp_path}/w.db",
                          sim_url=sim.url, extra=budgets)  # fmt: skip
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        port = next(e["port"] for e in daemon.events if e.get("event") == "http_listening")
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
    finally:
        await daemon.stop()
    exported = served(text)
    for where, names in named_metrics().items():
        assert names and names <= exported, (where, sorted(names - exported))
    dashboard = named_metrics()["dashboard"]
    wanted: Any = {"watchdog_saved_usd_total", "watchdog_polls_total", "watchdog_safety_tripped"}
    assert wanted <= dashboard  # spend and saved, polls, safety: what the issue asks to see


# The dashboard's queries, evaluated by promtool over scraped series (promtool test
# rules: the input series are what a daemon's /metrics said, one scrape held for 20 m).

RATE = "5m"  # what $__rate_interval stands for in promtool's evaluation


async def scrape(daemon: Daemon) -> str:
    port = next(e["port"] for e in daemon.events if e.get("event") == "http_listening")
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def input_series(text: str, instance: str) -> list[dict[str, str]]:
    """One exposition as promtool's input series: each sample held for 20 minutes, with
    the labels Prometheus would add (instance, job)."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        labels = labels.rstrip("}")
        extra = f'instance="{instance}",job="batch-watchdog"'
        series = f"{name}{{{labels + ',' if labels else ''}{extra}}}"
        found.append({"series": series, "values": f"{value}x20"})  # as exposed: NaN, 1e+09
    return found


def panel_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"].replace("$__rate_interval", RATE) for p in panels for t in p["targets"]]


def evaluate(tmp_path: Path, series: list[dict[str, str]], tests: list[dict[str, Any]]) -> None:
    """promtool test rules over ``series`` with these expression tests (at 10 m)."""
    (tmp_path / "none.yml").write_text("groups: []\n")
    spec = {"rule_files": ["none.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"eval_time": "10m", **t} for t in tests]}]}  # fmt: skip
    (tmp_path / "dashboard.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", "dashboard.test.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_the_dashboard_provisions_from_a_file() -> None:
    """No __inputs (only the UI import resolves them); a datasource variable that every
    panel and query uses; the stat panels say words, not 0 and 1."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dashboard and "${DS_" not in DASHBOARD.read_text()
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus")  # fmt: skip
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    stats = {p["title"]: p for p in dashboard["panels"] if p["type"] == "stat"}
    safety = stats["Safety tripped (alert-only)"]["fieldConfig"]["defaults"]["mappings"]
    assert safety[0]["options"]["1"]["text"] == "TRIPPED"


# Counters whose series appear only with their first event: a healthy run has none.
EVENTFUL = ("watchdog_cancels_abandoned_total", "watchdog_cancels_stuck_total")


async def test_every_panel_query_answers_on_a_recorded_scrape(
    tmp_path: Path, sim: Sim, clock: Clock
) -> None:
    """A daemon that polled, cancelled a batch over its cap and saw the cancel settle:
    every panel's query gives samples from its scrape (a typo in a metric or a label
    gives none), but for the counters of events that did not happen."""
    clock.t = time.time()
    sim.simulator.add("batch_big", cancel_delay=1, **SPENDER)
    sim.simulator.add("batch_small", total=100, rate=1)
    budgets = "budgets:\n  - {name: all, limit_usd: 1000}\n"
    config = write_config(tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{tmp_path}/w.db",
                          sim_url=sim.url, extra=budgets)  # fmt: skip
    config.write_text(config.read_text().replace(
        "safety: {", "safety: {cancel_poll_interval: 1s, "))  # fmt: skip
    cli = [sys.executable, "-m", "watchdog"]
    subprocess.run([*cli, "migrate", "--config", str(config)], check=True, capture_output=True)
    for batch_id in ("batch_big", "batch_small"):
        subprocess.run([*cli, "track", batch_id, "--provider", "sim", "--config", str(config)],
                       check=True, capture_output=True)  # fmt: skip
    daemon = await Daemon.start(config)
    text = ""
    try:
        await daemon.wait_for(
            lambda: any(e.get("event") == "cancel_succeeded" for e in daemon.events)
        )
        clock.advance(5)  # the provider has cancelled it by now
        await daemon.wait_for(
            lambda: any(e.get("event") == "cancel_settled" for e in daemon.events)
        )
        for _ in range(100):  # the tracked gauges come from a snapshot taken beside the ticks
            text = await scrape(daemon)
            if "watchdog_tracked_cost_usd{" in text and "watchdog_saved_usd_total{" in text:
                break
            await asyncio.sleep(0.2)
    finally:
        await daemon.stop()
    tests = []
    for query in panel_queries():
        none = any(name in query for name in EVENTFUL)
        some = [] if none else [{"labels": "{}", "value": 1}]
        tests.append({"expr": f"count({query}) > bool 0", "exp_samples": some})
    evaluate(tmp_path, input_series(text, "a"), tests)


def tracked_by_status(text: str) -> dict[str, int]:
    """What one scrape says of the tracked batches, summed over providers."""
    found: dict[str, int] = {}
    for match in re.finditer(r"^watchdog_tracked_batches\{([^}]*)\} (\S+)$", text, re.M):
        status = re.search(r'status="([^"]*)"', match.group(1))
        assert status is not None
        found[status.group(1)] = found.get(status.group(1), 0) + int(float(match.group(2)))
    return {k: v for k, v in found.items() if v}


async def test_counts_add_up_over_three_replicas_on_postgresql(
    tmp_path: Path, sim: Sim, clock: Clock
) -> None:
    """Three daemons on one PostgreSQL each export the database's counts: the panel's
    query over their three scrapes gives the database's counts (summing instances, as
    the dashboard once did, gives three times as many)."""
    clock.t = time.time()
    for i in range(5):
        sim.simulator.add(f"batch_run{i}", total=1000, rate=1)
    for i in range(3):
        sim.simulator.add(f"batch_done{i}", total=10, rate=10, age=3600)
    for i in range(2):
        sim.simulator.add(f"batch_new{i}", total=10, rate=1, validating_for=3600)
    expected = {"in_progress": 5, "completed": 3, "validating": 2}
    async with fresh_postgres() as url:
        config = write_config(tmp_path / "w.yaml", db_url=url, sim_url=sim.url)
        cli = [sys.executable, "-m", "watchdog"]
        subprocess.run([*cli, "migrate", "--config", str(config)], check=True, capture_output=True)
        for batch_id in sim.simulator.batches:
            subprocess.run([*cli, "track", batch_id, "--provider", "sim", "--config", str(config)],
                           check=True, capture_output=True)  # fmt: skip
        daemons = [await Daemon.start(config) for _ in range(3)]
        scrapes = []
        try:
            for daemon in daemons:
                await daemon.wait_for(lambda d=daemon: len(d.ticks()) >= 1)
            for daemon in daemons:  # each exports what the database holds, once polled
                for _ in range(300):
                    text = await scrape(daemon)
                    if tracked_by_status(text) == expected:
                        break
                    await asyncio.sleep(0.2)
                assert tracked_by_status(text) == expected
                scrapes.append(text)
        finally:
            codes = [await d.stop() for d in daemons]
        assert codes == [0, 0, 0]
    series = [
        s for text, name in zip(scrapes, "abc", strict=True) for s in input_series(text, name)
    ]
    (query,) = [q for q in panel_queries() if "watchdog_tracked_batches" in q]

    def samples(factor: int) -> list[dict[str, Any]]:
        return [{"labels": f'{{status="{s}"}}', "value": n * factor} for s, n in expected.items()]

    evaluate(tmp_path, series, [
        {"expr": query, "exp_samples": samples(1)},
        {"expr": "sum by (status) (watchdog_tracked_batches)", "exp_samples": samples(3)},
    ])  # fmt: skip
