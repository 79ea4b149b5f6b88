"""Property tests (hypothesis): random and mutated provider answers, config files and
command lines are either handled or refused cleanly — never an unexpected exception."""

from __future__ import annotations

import contextlib
import json
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.conftest import payload
from tests.test_settings import GOOD
from watchdog.cli.parser import build_parser
from watchdog.core.errors import PermanentError
from watchdog.core.models import InvalidBatchId, implausible, validate_batch_id, view_of
from watchdog.core.policies import Facts, History, Policy, evaluate
from watchdog.core.pricing import Price, batch_cost
from watchdog.providers.client import ProviderClient
from watchdog.settings import ConfigError, load_settings

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
BASES = [
    payload(name)
    for name in (
        "openai_completed_reasoning.json",
        "deepinfra_cancelling.json",
        "openai_validating_no_usage.json",
        "openai_failed_validation.json",
    )
]
POLICIES = [
    Policy.model_validate(p)
    for p in (
        {"name": "a", "when": {"cost_usd_above": 1}, "action": "cancel"},
        {
            "name": "b",
            "when": {
                "projected_cost_usd_above": 1,
                "failure_ratio_above": 0.1,
                "failure_ratio_confidence": 0.9,
            },
            "action": "cancel",
            "for": "1m",
        },
        {
            "name": "c",
            "when": {
                "eta_after_expiry": True,
                "stalled_for": "5m",
                "expires_within": "1h",
                "progress_below": 0.5,
                "age_above": "1h",
            },
            "action": "alert",
        },
    )
]
PRICES = [Price(model="*", input=Decimal("0.5"), output=Decimal("1"))]


def mutate(base: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    mutated = dict(base)
    for _ in range(data.draw(st.integers(0, 4))):
        key = data.draw(st.sampled_from(sorted(mutated) or ["id"]))
        if data.draw(st.booleans()):
            mutated.pop(key, None)
        else:
            mutated[key] = data.draw(JSON)
    return mutated


@PROFILE
@given(st.data())
def test_any_answer_is_a_batch_or_a_clear_refusal(data: st.DataObject) -> None:
    """A mutated provider answer parses into a batch that every later step handles, or
    is refused with a one-line PermanentError (which the tick records as poll_failed)."""
    body = mutate(data.draw(st.sampled_from(BASES)), data)
    raw = json.dumps(body).encode() if data.draw(st.booleans()) else data.draw(st.binary())
    client = ProviderClient("p", base_url="https://x", api_key=SecretStr("sk-secret-key"))
    try:
        batch = client._batch(raw, str(body.get("id")))
    except PermanentError as exc:
        assert "\n" not in str(exc) and "sk-secret-key" not in str(exc)
        return
    view = view_of("p", batch)
    implausible(batch, NOW)
    cost = batch_cost(PRICES, "p", view.model, view.tokens)
    history = History(finished=0, at=NOW, progress_at=NOW)
    evaluate(POLICIES, Facts(view, cost, NOW, history), {"b": NOW})


def mutated_config(data: st.DataObject) -> str:
    config = yaml.safe_load(GOOD)
    section = data.draw(st.sampled_from(["policies", "pricing", "providers", "top"]))
    target: Any = config if section == "top" else config[section]
    if isinstance(target, list):
        target = target[data.draw(st.integers(0, len(target) - 1))]
    if isinstance(target, dict) and section == "providers":
        target = target["deepinfra"]
    key = data.draw(st.sampled_from([*sorted(target), "extra_key"]))
    target[key] = data.draw(JSON)
    return yaml.safe_dump(config)


@PROFILE
@given(st.data())
def test_any_config_loads_or_is_one_clear_line(data: st.DataObject) -> None:
    """A mutated or random config file loads, or raises ConfigError with one line."""
    text = mutated_config(data) if data.draw(st.booleans()) else data.draw(st.text(max_size=200))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.yaml"
        path.write_text(text)
        try:
            load_settings(path)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{path}: ")


WORDS = st.sampled_from(
    [
        "run",
        "--once",
        "--dry-run",
        "track",
        "untrack",
        "list",
        "--json",
        "events",
        "exempt",
        "--for",
        "2h",
        "soon",
        "--reason",
        "--provider",
        "check-config",
        "--config",
        "--status",
        "resume",
        "demo",
        "--duration",
        "x",
        "",
        "-h",
        "--label",
        "k=v",
    ]
)


@PROFILE
@given(st.lists(WORDS | st.text(max_size=8), max_size=6))
def test_any_command_line_parses_or_exits_2(argv: list[str]) -> None:
    """Arguments either parse or end in a usage exit (2), or help (0): never a crash."""
    with contextlib.redirect_stderr(None), contextlib.redirect_stdout(None):  # type: ignore[type-var]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2)


@PROFILE
@given(st.text(max_size=140))
def test_any_batch_id_is_valid_or_refused(text: str) -> None:
    """Validation accepts exactly the safe alphabet and refuses the rest by name."""
    try:
        assert validate_batch_id(text) == text
        assert text not in (".", "..") and 1 <= len(text) <= 128
        assert all(c.isascii() and (c.isalnum() or c in "_.:-") for c in text)
    except InvalidBatchId as exc:
        assert str(exc).startswith("invalid batch id")
