"""The package's layers, checked from its import statements (an import-linter contract
written as a test): the pure core does no I/O, one module speaks SQL, one speaks HTTP,
and the CLI loads the heavy libraries only for the commands that need them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "watchdog"
# Pure: no clock, no network, no database, no logging; judged from tables of values.
PURE = {"models", "pricing", "policies", "decisions", "durations", "events", "rows", "errors"}
PURE |= {"observe", "cancels", "budgets", "replay", "explain", "report", "page", "dialects"}
IO_LIBRARIES = {
    "aiohttp",
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "aiosqlite",
    "asyncio",
    "structlog",
    "logging",
    "apscheduler",
    "prometheus_client",
    "socket",
    "time",
}
IO_MODULES = {
    "store",
    "tables",
    "http",
    "providers",
    "webhooks",
    "refresh",
    "act",
    "record",
    "engine",
    "app",
    "service",
    "scheduler",
    "health",
    "cli",
    "demo",
    "simulator",
    "chaos",
    "logs",
    "metrics",
    "safety",
    "systemd",
    "retention",
    "budgetbook",
    "snapshot",
}
SQL = {"sqlalchemy", "alembic", "asyncpg", "aiosqlite"}
SQL_LAYER = {"store", "tables"}  # tables only declares the schema the store speaks
HTTP_SERVERS = {"simulator", "health", "demo", "chaos", "service"}  # aiohttp.web only


def imports(module: Path) -> set[str]:
    """Every module name an import statement in this file names (relative ones resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules() -> dict[str, set[str]]:
    return {path.stem: imports(path) for path in PACKAGE.glob("*.py")}


def ours(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "watchdog" and len(parts) > 1 else None


def test_the_layers_are_all_named() -> None:
    """A new module must be placed in a layer here before the contracts can hold."""
    # settings and policytests read files (config, policy tests), nothing else.
    known = PURE | IO_MODULES | {"__init__", "__main__", "settings", "policytests", "breaker"}
    assert set(modules()) <= known, f"unplaced modules: {set(modules()) - known}"


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_core_imports_no_io(name: str) -> None:
    found = modules()[name]
    libraries = {n.split(".")[0] for n in found} & IO_LIBRARIES
    local = {ours(n) for n in found} & IO_MODULES
    assert not libraries and not local, f"{name} imports {libraries | local}"


def test_only_the_store_speaks_sql() -> None:
    speakers = {m for m, found in modules().items() if {n.split(".")[0] for n in found} & SQL}
    assert speakers <= SQL_LAYER, speakers
    assert "store" in speakers


def test_only_the_http_base_imports_aiohttps_client() -> None:
    """Servers (the simulator, health endpoints) may use aiohttp.web; a client session,
    its errors and timeouts belong to watchdog/http.py alone."""
    for name, found in modules().items():
        client = {n for n in found if n.split(".")[0] == "aiohttp"} - {"aiohttp.web"}
        if name == "http":
            assert client, "watchdog/http.py no longer uses aiohttp"
        elif name in HTTP_SERVERS:
            assert not client, f"{name} imports {client}: only aiohttp.web is for servers"
        else:
            assert not {n for n in found if n.startswith("aiohttp")}, name


def test_the_cli_loads_no_heavy_library_for_help() -> None:
    """`batch-watchdog --help` (and a usage error) must not wait for SQLAlchemy, aiohttp,
    APScheduler, pydantic-settings or the app: they load with the commands that use them."""
    probe = (
        "import sys; from watchdog.cli import build_parser; build_parser();"
        "print(' '.join(sorted(m for m in sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    heavy = {"sqlalchemy", "aiohttp", "apscheduler", "alembic", "pydantic_settings", "structlog"}
    assert not {m.split(".")[0] for m in loaded} & heavy
    assert "watchdog.app" not in loaded and "watchdog.engine" not in loaded
