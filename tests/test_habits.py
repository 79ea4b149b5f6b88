"""The ecosystem's habits: the config's JSON Schema (shipped, described, and what every
shipped config passes), --version, help and an example for every command and option,
shell completion that completes, test-policies --config, and a bare YAML ``off``."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import Sim
from tests.daemons import Daemon, write_config
from watchdog.cli import main
from watchdog.cli.parser import build_parser
from watchdog.core.durations import human_duration
from watchdog.core.policies import ConditionRow
from watchdog.views.configschema import json_schema
from watchdog.views.explain import _condition

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "watchdog.schema.json"
BIN = Path(sys.executable).parent


def shipped_configs() -> list[tuple[str, dict[str, Any]]]:
    """Every config the repository ships: the files, and the one inside the ConfigMap."""
    files = [p for p in (ROOT / "config").glob("*.yaml") if p.name != "policies.test.yaml"]
    found = [(p.name, yaml.safe_load(p.read_text())) for p in files]
    kubernetes = ROOT / "deploy/kubernetes/watchdog.yaml"
    found.append(("kubernetes", yaml.safe_load(kubernetes.read_text())))
    tests = yaml.safe_load((ROOT / "config/policies.test.yaml").read_text())
    if isinstance(tests.get("config"), dict):
        found.append(("policies.test.yaml", tests["config"]))
    return found


def test_the_shipped_schema_is_what_schema_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(SHIPPED.read_text()), "run: batch-watchdog schema > " + str(
        SHIPPED.relative_to(ROOT)
    )
    jsonschema.Draft202012Validator.check_schema(printed)


def test_every_key_is_described() -> None:
    schema = json_schema()
    parts = [("(top)", schema), *schema["$defs"].items()]
    missing = [
        f"{name}.{key}"
        for name, part in parts
        for key, spec in part.get("properties", {}).items()
        if "description" not in spec
    ]
    assert not missing


@pytest.mark.parametrize(("name", "config"), shipped_configs())
def test_every_shipped_config_passes_the_schema(name: str, config: dict[str, Any]) -> None:
    errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(config))
    assert not errors, [e.message for e in errors]


@pytest.mark.parametrize(
    ("config", "valid"),
    [
        ({"poll_interval": "90s"}, True),
        ({"poll_interval": 90}, True),
        ({"poll_interval": "soon"}, False),  # durations as the config reads them
        ({"poll_interval": "PT1M"}, False),  # not ISO 8601: the daemon would refuse it
        ({"providers": {"p": {"base_url": "https://x", "discover": True}}}, True),
        ({"providers": {"p": {"base_url": "https://x", "discover": {"created_within": "2d"}}}},
         True),
        ({"dryrun": True}, False),  # unknown keys, as the daemon says
        ({"policies": [{"name": "p", "when": {"cost_usd_above": 5}, "action": "stop"}]}, False),
    ],
)  # fmt: skip
def test_the_schema_says_what_the_daemon_says(config: dict[str, Any], valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(json_schema()).iter_errors(config))
    assert (not errors) == valid, [e.message for e in errors]


def test_the_example_config_names_its_schema() -> None:
    first = (ROOT / "config/watchdog.example.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./watchdog.schema.json"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out == f"batch-watchdog {version('batch-watchdog')}\n"


def commands() -> dict[str, Any]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return dict(sub.choices)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_help_and_examples(name: str) -> None:
    command = commands()[name]
    assert command.epilog.startswith("examples:\n  batch-watchdog " + name)
    undocumented = [a.dest for a in command._actions if not a.help]
    assert not undocumented
    for line in command.epilog.splitlines()[1:]:  # every example parses as written
        words = shlex.split(line)[1:]
        words = words[: words.index(">")] if ">" in words else words
        build_parser().parse_args(words)


def completions(line: str) -> list[str]:
    """What the bash completion script offers for ``line`` (the cursor at its end),
    through bash itself and the installed console script."""
    script = f"""source <(batch-watchdog completion bash)
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_python_argcomplete batch-watchdog "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60, check=True)  # fmt: skip
    return [w.strip() for w in done.stdout.splitlines() if w.strip()]


def test_bash_completes_commands_and_options() -> None:
    assert completions("batch-watchdog exp") == ["explain"]
    assert "--kind" in completions("batch-watchdog events --k")
    assert "cancel_succeeded" in completions("batch-watchdog events --kind cancel_s")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_a_completion_script_for_each_shell(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "batch-watchdog" in script and "_ARGCOMPLETE" in script
    if shell == "bash":
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_policy_tests_take_the_users_own_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config judges with the given file (the user's copy), whatever the file names:
    a copy with a higher cost cap no longer cancels the research spender."""
    mine = tmp_path / "watchdog.yaml"
    mine.write_text((ROOT / "config/watchdog.example.yaml").read_text().replace(
        "when: {cost_usd_above: 10}", "when: {cost_usd_above: 100}"))  # fmt: skip
    tests = str(ROOT / "config/policies.test.yaml")
    assert main(["test-policies", tests]) == 0
    assert main(["test-policies", "--config", str(mine), tests]) == 1
    out = capsys.readouterr().out
    assert "batch_research_spender at 120s: expected policy cost-cap" in out


def test_a_bare_off_says_quote_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "w.yaml"
    config.write_text("safety:\n  exempt_metadata: {watchdog: off}\n")
    assert main(["check-config", "--config", str(config)]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'quote it ("off")' in err


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0, "0s"), (45, "45s"), (3600, "1h"), (86364.007229, "23h59m24s"), (93784, "1d2h3m4s"),
     (-90, "-1m30s")],
)  # fmt: skip
def test_a_measured_duration_reads_as_one(seconds: float, said: str) -> None:
    assert human_duration(seconds) == said


def test_explain_says_durations_and_money_as_such() -> None:
    rows = [
        ConditionRow("expires_within", 3600.0, 86364.007229, False, None),
        ConditionRow("cost_usd_above", 5.0, 0.25, False, None),
        ConditionRow("progress_below", 0.5, 0.25, True, None),
    ]
    assert [_condition(r) for r in rows] == [
        "expires_within 1h: observed 23h59m24s (does not hold)",
        "cost_usd_above $5.0000: observed $0.2500 (does not hold)",
        "progress_below 0.5: observed 0.25 (holds)",
    ]


async def test_the_healthcheck_asks_the_port_the_config_names(tmp_path: Path, sim: Sim) -> None:
    """What the image's HEALTHCHECK runs: 0 while the daemon answers at the configured
    port, 1 with one line once it is gone; a config whose port is 0 cannot be asked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{tmp_path}/w.db",
                          sim_url=sim.url)  # fmt: skip
    config.write_text(config.read_text().replace("http: {port: 0}", f"http: {{port: {port}}}"))
    check = [sys.executable, "-m", "watchdog", "healthcheck", "--config", str(config)]
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        alive = subprocess.run(check, capture_output=True, text=True, timeout=60)
    finally:
        await daemon.stop()
    assert alive.returncode == 0 and alive.stdout == f"ok: http://127.0.0.1:{port}/healthz\n"
    gone = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "healthz" in gone.stderr
    config.write_text(config.read_text().replace(f"http: {{port: {port}}}", "http: {port: 0}"))
    unknown = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "http.port is 0" in unknown.stderr
