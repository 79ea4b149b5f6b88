"""The deployment files are checked by the tools operators trust: systemd-analyze,
hadolint, kubernetes-validate and kustomize — plus what those tools cannot know."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog.settings import Settings, env_overrides, load_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "batch-watchdog.service"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path is None:
        pytest.skip(f"{name} is not installed on this machine")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed: verify needs ExecStart's binary to exist, so point it at ours."""
    unit = tmp_path / UNIT.name
    script = str(BIN / "batch-watchdog")
    unit.write_text(UNIT.read_text().replace("/opt/batch-watchdog/bin/batch-watchdog", script))
    return unit


def test_systemd_unit_verifies_clean(tmp_path: Path) -> None:
    """systemd-analyze verify prints nothing at all for the unit."""
    result = run(tool("systemd-analyze"), "verify", str(installed_unit(tmp_path)))
    assert result.returncode == 0 and result.stdout + result.stderr == ""


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    """The unit's exposure stays low (systemd-analyze security, 0-100 scale, below 2.0)."""
    result = run(
        tool("systemd-analyze"),
        "security",
        "--offline=true",
        "--threshold=20",
        str(installed_unit(tmp_path)),
    )
    assert result.returncode == 0, result.stdout[-500:]


def test_systemd_unit_has_what_the_daemon_relies_on() -> None:
    """Type=notify with a watchdog, no restart on config errors, the hardening asked for."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "DynamicUser=yes",
        "StateDirectory=batch-watchdog",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text, line


def test_dockerfile_lints_clean() -> None:
    """hadolint, at its default rules, reports nothing."""
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_dockerfile_shape() -> None:
    """Multi-stage, a numeric non-root user, a health check, exec-form entrypoint, no ADD."""
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [
        line.split()[0]
        for line in lines
        if line and not line.startswith("#") and line.split()[0].isupper()
    ]
    assert instructions.count("FROM") == 2 and "ADD" not in instructions
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM")) :]
    assert "USER 10001:10001" in final
    assert any(line.startswith("HEALTHCHECK") for line in final)
    assert 'ENTRYPOINT ["batch-watchdog"]' in final


CONFIG = "watchdog.yaml"  # the config file the kustomization makes the ConfigMap of
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", CONFIG))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(manifest: Path) -> None:
    """Every manifest passes kubernetes-validate --strict (typos in fields fail)."""
    result = run(tool("kubernetes-validate"), "--strict", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_builds_and_validates(tmp_path: Path) -> None:
    """kubectl kustomize builds the directory, and what it builds validates."""
    built = run(tool("kubectl"), "kustomize", str(K8S))
    assert built.returncode == 0, built.stderr
    out = tmp_path / "built.yaml"
    out.write_text(built.stdout)
    result = run(tool("kubernetes-validate"), "--strict", str(out))
    assert result.returncode == 0, result.stdout + result.stderr


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def built() -> list[dict[str, Any]]:
    """What kubectl kustomize makes of the directory."""
    done = run(tool("kubectl"), "kustomize", str(K8S))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_configmap_holds_a_valid_config() -> None:
    """The generated ConfigMap holds the config file, which loads with the daemon's own
    loader; its name carries the file's hash, and the Deployment mounts that name (an
    edit rolls the pod)."""
    found = built()
    (configmap,) = [d for d in found if d["kind"] == "ConfigMap"]
    assert configmap["data"]["watchdog.yaml"] == (K8S / CONFIG).read_text()
    settings = load_settings(K8S / CONFIG, environ={})
    assert settings.http.host == "0.0.0.0" and settings.dry_run
    name = configmap["metadata"]["name"]
    assert name.startswith("batch-watchdog-config-") and len(name) > len("batch-watchdog-config-")
    (deployment,) = [d for d in found if d["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": name}} in volumes


def test_the_kit_scrapes_and_alerts() -> None:
    """The ServiceMonitor selects the metrics Service, names the job as the alert rules
    expect, and the PrometheusRule is in the kustomization."""
    found = built()
    kinds = {d["kind"]: d for d in found}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds.keys()
    monitor, service = kinds["ServiceMonitor"], kinds["Service"]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "batch-watchdog"
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in ports for e in monitor["spec"]["endpoints"])
    rules = kinds["PrometheusRule"]["spec"]["groups"][0]["rules"]
    assert any('job="batch-watchdog"' in r["expr"] for r in rules)


def test_deployment_probes_security_and_grace() -> None:
    """Probes on /healthz and /readyz, locked-down pods, and time to drain on SIGTERM."""
    spec = docs("deployment.yaml")[0]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert sec["capabilities"]["drop"] == ["ALL"] and spec["securityContext"]["runAsNonRoot"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    shutdown = Settings().shutdown_timeout.total_seconds()
    assert spec["terminationGracePeriodSeconds"] > shutdown


def image_environment() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env |= dict(pair.split("=", 1) for pair in line.split()[1:])
    return env


def unit_environment() -> dict[str, str]:
    """The unit's Environment= lines."""
    lines = [line.removeprefix("Environment=") for line in UNIT.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line.startswith("WATCHDOG_"))


@pytest.mark.parametrize("environment", [image_environment, unit_environment])
def test_the_file_names_the_database_under_the_image_and_the_unit(
    tmp_path: Path, environment: Any
) -> None:
    """Following the ConfigMap's own comment to switch to PostgreSQL gives PostgreSQL, also
    under the image's and the unit's environment: they set no setting the file carries."""
    env = environment()
    assert env.get("WATCHDOG_CONFIG") == "/etc/batch-watchdog/watchdog.yaml"
    assert env_overrides(env) == {}
    text = (K8S / CONFIG).read_text()
    wanted = "postgresql+psycopg://watchdog@postgres.db.svc/watchdog"
    assert f"# database_url: {wanted}" in text
    switched = re.sub(r"(?m)^database_url: .*$", "", text).replace(
        "# database_url:", "database_url:"
    )
    path = tmp_path / "watchdog.yaml"
    path.write_text(switched)
    settings = load_settings(path, environ=env)
    assert settings.database_url == wanted and settings.origin("database_url") == "file"


def test_the_image_installs_pinned_versions() -> None:
    """The build installs with constraints.txt, which pins every distribution the daemon
    needs at run time (each to one version, within what pyproject.toml allows), and the
    build context holds only what the build copies."""
    import tomllib

    from packaging.requirements import Requirement

    from tests.pins import canonical, runtime_closure

    assert "pip install --no-cache-dir -c constraints.txt" in (ROOT / "Dockerfile").read_text()
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert set(runtime_closure()) <= set(pins), "run: python -m tests.pins > constraints.txt"

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["postgres"]:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonical(req.name)]), text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:7] == [
        "!pyproject.toml",
        "!README.md",
        "!constraints.txt",
        "!watchdog/",
        "!migrations/",
        "!config/",
        "**/__pycache__",
    ]
