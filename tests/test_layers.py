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
# What each folder (or top-level module) may import of ours; README's Development
# section says the same in words. A folder always may import itself.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "providers": {"core", "clock"},
    "storage": {"core"},
    "settings": {"core", "providers"},
    "views": {"core", "settings"},
    "daemon": {"core", "providers", "storage", "settings", "views", "clock"},
    "app": {"core", "providers", "storage", "settings", "views", "daemon", "clock"},
    "sim": {"core", "providers", "settings", "daemon", "app", "clock"},
    "cli": {"core", "providers", "storage", "settings", "views", "daemon", "app", "sim", "clock"},
    "clock": set(),
    "__init__": set(),
    "__main__": {"cli"},
}
# Pure: no clock, no network, no database, no logging; judged from tables of values.
PURE = {"core", "views"}
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
SQL = {"sqlalchemy", "alembic", "asyncpg", "aiosqlite"}
CLOCK_READS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


def imports(module: Path) -> set[str]:
    """Every module name an import statement in this file names (relative ones resolved)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def room(path: Path) -> str:
    """The folder a module lives in, or the top-level module's own name."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def modules() -> dict[str, set[str]]:
    """Every module as folder/name (or name at the top) with what it imports."""
    return {
        str(path.relative_to(PACKAGE).with_suffix("")): imports(path)
        for path in PACKAGE.rglob("*.py")
    }


def ours(name: str) -> str | None:
    """The folder (or top-level module) an import of ours lands in."""
    parts = name.split(".")
    if parts[0] != "watchdog" or len(parts) < 2:
        return None
    return parts[1]


def test_every_room_is_placed() -> None:
    """A new folder or top-level module must be given its rules here first."""
    rooms = {room(path) for path in PACKAGE.rglob("*.py")}
    assert rooms <= set(MAY_IMPORT), f"unplaced: {rooms - set(MAY_IMPORT)}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_follow_the_folder_rules(name: str) -> None:
    here = name.split("/")[0]
    allowed = MAY_IMPORT[here] | {here}
    found = {ours(n) for n in modules()[name]} - {None}
    # `from watchdog import x` names the top-level module x.
    assert found <= allowed, f"watchdog/{name}.py imports {found - allowed}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.split("/")[0] in PURE))
def test_the_pure_rooms_do_no_io(name: str) -> None:
    found = modules()[name]
    libraries = {n.split(".")[0] for n in found} & IO_LIBRARIES
    assert not libraries, f"watchdog/{name}.py imports {libraries}"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n != "clock"))
def test_only_the_clock_module_reads_the_clock(name: str) -> None:
    """`now` is passed in; watchdog/clock.py is the one place it is read."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    reads = {
        f"{ast.unparse(node.func.value)}.{node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_READS
        and ast.unparse(node.func.value) in {"datetime", "time", "date"}
    }
    # perf_counter times a tick's own duration for its summary line; it is not the clock.
    assert reads <= {"time.perf_counter"}, f"watchdog/{name}.py reads {reads}"


def test_only_storage_speaks_sql() -> None:
    speakers = {m for m, found in modules().items() if {n.split(".")[0] for n in found} & SQL}
    assert speakers and {s.split("/")[0] for s in speakers} == {"storage"}, speakers


def test_only_the_providers_use_aiohttps_client() -> None:
    """Servers (the simulator, the health endpoints) may use aiohttp.web; a client
    session, its errors and timeouts belong to watchdog/providers/http.py alone."""
    for name, found in modules().items():
        client = {n for n in found if n.split(".")[0] == "aiohttp"} - {"aiohttp.web"}
        if name == "providers/http":
            assert client, "watchdog/providers/http.py no longer uses aiohttp's client"
        else:
            assert not client, f"{name} imports {client}: only aiohttp.web is for servers"


def test_the_cli_loads_no_heavy_library_for_help() -> None:
    """`batch-watchdog --help` (and a usage error) must not wait for SQLAlchemy, aiohttp,
    APScheduler, pydantic-settings or the app: they load with the commands that use them."""
    probe = (
        "import sys; import watchdog.cli; from watchdog.cli.parser import build_parser;"
        "build_parser();"
        "print(' '.join(sorted(m for m in sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    heavy = {"sqlalchemy", "aiohttp", "apscheduler", "alembic", "pydantic_settings", "structlog"}
    assert not {m.split(".")[0] for m in loaded} & heavy
    assert "watchdog.app" not in loaded and "watchdog.daemon.engine" not in loaded
