"""The package's layers, checked from its import statements (an import-linter contract
written as a test): the pure core does no I/O, one module speaks SQL, one speaks HTTP,
and the CLI loads the heavy libraries only for the commands that need them."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.layers import (
    MAX_FUNCTION_LINES,
    MAX_MODULE_LINES,
    MAY_IMPORT,
    PACKAGE,
    PURE,
    against_the_rules,
    functions,
    modules,
    room,
)

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


def test_every_room_is_placed() -> None:
    """A new folder or top-level module must be given its rules here first."""
    rooms = {room(path) for path in PACKAGE.rglob("*.py")}
    assert rooms <= set(MAY_IMPORT), f"unplaced: {rooms - set(MAY_IMPORT)}"


def test_imports_follow_the_folder_rules() -> None:
    assert against_the_rules() == []


def test_the_rules_can_be_broken() -> None:
    """The rules' reader sees an import that runs against them (core importing up)."""
    here = PACKAGE / "core" / "_probe_upward.py"
    here.write_text("from watchdog.daemon import engine\n")
    try:
        assert against_the_rules() == ["watchdog/core/_probe_upward.py imports watchdog.daemon"]
    finally:
        here.unlink()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=str)
def test_modules_and_functions_stay_short(path: object) -> None:
    """No module over 500 lines, no function over 50: a longer one is split by what it
    does (the argument parser is built a command at a time)."""
    assert isinstance(path, type(PACKAGE))
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, path
    long = [(name, n) for name, n in functions(path) if n > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {long}"


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


def test_the_drawing_the_readme_names_runs() -> None:
    """`python -m tests.layers` (README, Development) prints every folder and passes."""
    root = PACKAGE.parent
    done = subprocess.run(
        [sys.executable, "-m", "tests.layers"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for folder in ("core/", "providers/", "storage/", "views/", "daemon/", "sim/", "cli/"):
        assert f"\n{folder} " in "\n" + done.stdout, folder
    assert "against the folder rules: none" in done.stdout


def test_every_folder_ships() -> None:
    """pyproject lists the packages by name: a folder missing there would be left out of
    the wheel (and the Docker image), though the tests, run from the checkout, pass."""
    import tomllib

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    folders = {f"watchdog.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= listed, folders - listed


def test_the_engine_is_the_tick_and_its_sequencing() -> None:
    """The engine's class stays at most 250 lines: a step of its own goes to a
    collaborator (listing, budgeting, watch, gate, act, asks), not into the tick."""
    tree = ast.parse((PACKAGE / "daemon" / "engine.py").read_text())
    (engine,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine"]
    assert (engine.end_lineno or 0) - engine.lineno + 1 <= 250
