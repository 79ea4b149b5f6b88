"""Config loading: YAML plus WATCHDOG_* overrides; every mistake is one line naming
the file, the policy and the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from watchdog.settings import ConfigError, config_path, load_settings

GOOD = """
database_url: sqlite+aiosqlite:///w.db
poll_interval: 90s
providers:
  deepinfra:
    base_url: https://api.deepinfra.com/v1/openai
    api_key_env: DEEPINFRA_TOKEN
pricing:
  - model: "meta-llama/*"
    provider: deepinfra
    input: 0.03
    cached_input: 0.015
    output: 0.05
policies:
  - name: cost-cap
    match: {provider: deepinfra, model: "meta-llama/*", metadata: {team: research}}
    when: {cost_usd_above: 10}
    action: cancel
  - name: expiring-slow
    when: {expires_within: 1h, progress_below: 0.5}
    action: cancel
  - name: failing
    when: {failure_ratio_above: 0.2, min_requests: 50}
    action: alert
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchdog.yaml"
    path.write_text(text)
    return path


def test_design_example_loads(tmp_path: Path) -> None:
    """The contract's example config loads as written."""
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.poll_interval == timedelta(seconds=90)
    assert [p.name for p in settings.policies] == ["cost-cap", "expiring-slow", "failing"]
    assert settings.policies[1].when.expires_within == timedelta(hours=1)
    assert settings.pricing[0].cached_rate == settings.pricing[0].cached_input


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_* variables win over the file, nested keys with __, the rest merges; each
    override is known by where it came from."""
    monkeypatch.setenv("WATCHDOG_POLL_INTERVAL", "5m")
    monkeypatch.setenv("WATCHDOG_DRY_RUN", "true")
    monkeypatch.setenv("WATCHDOG_PROVIDERS__DEEPINFRA__TIMEOUT", "10s")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.poll_interval == timedelta(minutes=5) and settings.dry_run
    provider = settings.providers["deepinfra"]
    assert provider.timeout == timedelta(seconds=10)
    assert provider.base_url == "https://api.deepinfra.com/v1/openai"
    variables = [
        "WATCHDOG_DRY_RUN",
        "WATCHDOG_POLL_INTERVAL",
        "WATCHDOG_PROVIDERS__DEEPINFRA__TIMEOUT",
    ]
    keys = ["dry_run", "poll_interval", "providers.deepinfra.timeout"]
    assert settings.origins == {
        k: f"environment variable {v}" for k, v in zip(keys, variables, strict=True)
    }
    assert settings.origin("database_url") == "file"
    assert settings.origin("lease_duration") == "default"


def test_load_reads_the_environment_it_is_given(tmp_path: Path) -> None:
    """A load is a function of its arguments: an explicit environ, explicit overrides
    (which beat it), and never the process's environment behind their back."""
    path = write(tmp_path, GOOD)
    env = {"WATCHDOG_DATABASE_URL": "sqlite+aiosqlite:///from-env.db"}
    assert load_settings(path, environ=env).database_url.endswith("from-env.db")
    forced = load_settings(path, environ=env, overrides={"database_url": "sqlite+aiosqlite:///x"})
    assert forced.database_url == "sqlite+aiosqlite:///x"
    assert forced.origin("database_url") == "override"
    assert load_settings(path, environ={}).database_url.endswith("/w.db")


@pytest.mark.parametrize(
    "variable",
    [
        "WATCHDOG_DRYRUN",
        "WATCHDOG_SAFETY__MAX_CANCELS",
        "WATCHDOG_PROVIDERS__DEEPINFRA__KEY",
        "watchdog_poll_intervall",
        "WATCHDOG_",
    ],
)
def test_unknown_watchdog_variable_is_a_config_error(tmp_path: Path, variable: str) -> None:
    """A typo such as WATCHDOG_DRYRUN is refused, naming the variable, not ignored."""
    with pytest.raises(ConfigError, match=f"environment variable {variable}: no such setting"):
        load_settings(write(tmp_path, GOOD), environ={variable: "true"})


def test_variables_that_are_not_settings_are_left_alone(tmp_path: Path) -> None:
    """WATCHDOG_CONFIG (the path) and systemd's WATCHDOG_USEC / WATCHDOG_PID."""
    env = {"WATCHDOG_CONFIG": "x.yaml", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert load_settings(write(tmp_path, GOOD), environ=env).origins == {}


@pytest.mark.parametrize(
    "text",
    [
        "dry_run: true\ndry_run: false\n",
        "safety:\n  max_cancels_per_tick: 5\n  max_cancels_per_tick: 500\n",
        "providers:\n  a: {base_url: 'https://a'}\n  a: {base_url: 'https://b'}\n",
    ],
)
def test_duplicate_yaml_keys_are_a_config_error(tmp_path: Path, text: str) -> None:
    """`dry_run: true` then `dry_run: false` must not quietly mean live."""
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: duplicate key"):
        load_settings(write(tmp_path, text), environ={})


BAD = [
    # Values that would crash every tick, or silently disable a guard (issue 11).
    ("lease_duration: 999999999d\n", "lease_duration: invalid duration '999999999d': at most"),
    (
        "policies:\n  - {name: x, when: {age_above: 3000000d}, action: cancel}\n",
        "policy 'x': when.age_above: invalid duration '3000000d': at most 3650d",
    ),
    (
        "providers:\n  p: {base_url: 'https://p', timeout: 0}\n",
        "providers.p.timeout: must be more than 0s",
    ),
    (
        "notify:\n  webhooks: [{url: 'https://h', timeout: 0s}]\n",
        "notify.webhooks.0.timeout: must be more than 0s",
    ),
    (
        "policies:\n  - name: x\n    when: {cost_usd_abov: 3}\n    action: cancel\n",
        "policy 'x': when.cost_usd_abov: unknown key; valid keys: age_above, cost_usd_above",
    ),
    (
        "policies:\n  - name: x\n    when: {age_above: soon}\n    action: cancel\n",
        "policy 'x': when.age_above: invalid duration 'soon'",
    ),
    ("poll_interval: 5 minutes\n", "poll_interval: invalid duration"),
    (
        "policies:\n  - name: x\n    when: {age_above: 1h}\n    action: delete\n",
        "policy 'x': action: must be 'cancel' or 'alert'",
    ),
    (
        "policies:\n  - name: x\n    match: {model: 'llama[' }\n    when: {age_above: 1h}\n"
        "    action: cancel\n",
        "policy 'x': match.model: bad glob",
    ),
    (
        "policies:\n  - {name: x, when: {age_above: 1h}, action: cancel}\n"
        "  - {name: x, when: {age_above: 2h}, action: cancel}\n",
        "duplicate policy name 'x'",
    ),
    (
        "policies:\n  - {name: x, match: {provider: nope}, when: {age_above: 1h},"
        " action: cancel}\n",
        "policy 'x': match.provider: unknown provider 'nope'; known: (none configured)",
    ),
    (
        "pricing:\n  - {model: a, provider: nope, input: 1, output: 1}\n",
        "pricing[0].provider: unknown provider 'nope'",
    ),
    ("providers:\n  p: {base_url: ftp://x}\n", "providers.p.base_url"),
    ("?\n", "a setting's name must be text, not None"),  # a hypothesis find
    ("providers:\n  p: {base_url: https://x, api: gemini}\n", "providers.p.api: must be 'openai'"),
    (
        "providers:\n  p: {base_url: https://x, api_kye_env: K}\n",
        "providers.p.api_kye_env: unknown key; valid keys: allow_insecure_http, api, api_key_env",
    ),
    (
        "policies:\n  - {when: {age_above: 1h}, action: cancel}\n",
        "policies[0]: name: Field required",
    ),
    ("polling: 5s\n", "polling: unknown key"),
    ("policies: [\n", "invalid YAML at line 2"),
    ("- a\n- b\n", "the top level must be a mapping"),
    (
        "policies:\n  - {name: x, when: {}, action: cancel}\n",
        "policy 'x': when: needs at least one",
    ),
    ("poll_interval: 0s\n", "poll_interval: must be at least 1s"),
    (
        "http:\n  tokens:\n    - {name: a, role: viewer}\n",
        "http.tokens.0: give exactly one of env and file",
    ),
    (
        "http:\n  tokens:\n    - {name: a, role: admin, env: X}\n",
        "http.tokens.0.role: must be 'viewer' or 'operator'",
    ),
    (
        "http:\n  tokens:\n    - {name: a, role: viewer, env: X}\n"
        "    - {name: a, role: operator, env: Y}\n",
        "http.tokens: token names must be unique: a",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_config_errors_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake names the file, the policy and the field, on one line."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is not silently an empty config."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_config_path_order() -> None:
    """--config, else $WATCHDOG_CONFIG, else config/watchdog.yaml."""
    assert str(config_path("a.yaml", {"WATCHDOG_CONFIG": "b.yaml"})) == "a.yaml"
    assert str(config_path(None, {"WATCHDOG_CONFIG": "b.yaml"})) == "b.yaml"
    assert str(config_path(None, {})) == "config/watchdog.yaml"


def test_key_comes_from_the_named_variable(tmp_path: Path) -> None:
    """A provider's key is read from its variable; a missing one is a config error."""
    provider = load_settings(write(tmp_path, GOOD)).providers["deepinfra"]
    key = provider.read_key("deepinfra", {"DEEPINFRA_TOKEN": "sk-abc\n"})
    assert key is not None and key.get_secret_value() == "sk-abc"
    assert "sk-abc" not in repr(key)
    with pytest.raises(ConfigError, match="environment variable DEEPINFRA_TOKEN is not set"):
        provider.read_key("deepinfra", {})


def test_key_file(tmp_path: Path) -> None:
    """api_key_file reads a mounted secret; a missing file is a config error."""
    secret = tmp_path / "key"
    secret.write_text("sk-file\n")
    settings = load_settings(
        write(tmp_path, f"providers:\n  p: {{base_url: https://x, api_key_file: {secret}}}\n")
    )
    key = settings.providers["p"].read_key("p", {})
    assert key is not None and key.get_secret_value() == "sk-file"
    secret.write_text(" \n")
    with pytest.raises(ConfigError, match=f"provider 'p': api_key_file {secret} is empty"):
        settings.providers["p"].read_key("p", {})
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read api_key_file"):
        settings.providers["p"].read_key("p", {})


def test_shipped_configs_load() -> None:
    """Every YAML under config/ is valid, and says what it is for: providers, prices and
    policies, the example dry."""
    config = Path(__file__).parent.parent.joinpath("config")
    # *.test.yaml are policy tests (test_policytests runs them), not configs.
    paths = sorted(p for p in config.glob("*.yaml") if not p.name.endswith(".test.yaml"))
    assert {p.name for p in paths} >= {"demo.yaml", "watchdog.example.yaml"}
    for path in paths:
        settings = load_settings(path, environ={})
        assert settings.providers and settings.pricing and settings.policies, path
        assert settings.origins == {}
    assert load_settings(paths[-1], environ={}).dry_run


def test_webhooks_take_any_event_kind(tmp_path: Path) -> None:
    """A hook may ask for any event kind (provider_unavailable, backlog, …); a typo is
    one line listing the kinds there are."""
    hook = "notify:\n  webhooks:\n    - {url: 'https://hooks.example/x', events: [%s]}\n"
    settings = load_settings(write(tmp_path, GOOD + hook % "provider_unavailable, backlog"))
    assert settings.notify.webhooks[0].events == ["provider_unavailable", "backlog"]
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, GOOD + hook % "policy_matchd"))
    assert "notify.webhooks.0.events.0" in str(caught.value)
    assert "'provider_unavailable'" in str(caught.value) and "\n" not in str(caught.value)


def test_api_version_written_bare_as_a_date_is_the_version(tmp_path: Path) -> None:
    """Azure's documents write ``api_version: 2024-10-21``; YAML reads that as a date."""
    provider = "{base_url: https://x.example/openai, api: azure, api_version: 2024-10-21}"
    text = f"providers:\n  az: {provider}\n"
    settings = load_settings(write(tmp_path, text))
    assert settings.providers["az"].api_version == "2024-10-21"


def test_tokens_are_read_by_name_and_role(tmp_path: Path) -> None:
    """The page's token is a viewer named ``page``; each named token is read from its
    variable or file; a missing one, or two with one value, is a config error."""
    secret = tmp_path / "operator"
    secret.write_text("op-0123456789\n")
    text = (
        "http:\n  token_env: PAGE\n  tokens:\n"
        "    - {name: grafana, role: viewer, env: VIEWER}\n"
        f"    - {{name: oncall, role: operator, file: {secret}}}\n"
    )
    http = load_settings(write(tmp_path, text), environ={}).http
    found = http.read_tokens({"PAGE": "page-0123456789", "VIEWER": "view-0123456789"})
    assert [(n, r, v.get_secret_value()) for n, r, v in found] == [
        ("page", "viewer", "page-0123456789"),
        ("grafana", "viewer", "view-0123456789"),
        ("oncall", "operator", "op-0123456789"),
    ]
    with pytest.raises(ConfigError, match="environment variable VIEWER is not set"):
        http.read_tokens({"PAGE": "page-0123456789"})
    with pytest.raises(ConfigError, match="two tokens hold the same value"):
        http.read_tokens({"PAGE": "op-0123456789", "VIEWER": "view-0123456789"})
