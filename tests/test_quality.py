"""The code holds the line the project set: ruff and mypy --strict are clean, and
`watchdog` is this project's package, not PyPI's namesake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import watchdog

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_watchdog_is_this_package() -> None:
    """The import name is ours (PyPI's filesystem 'watchdog' must never shadow it)."""
    assert Path(watchdog.__file__).resolve().parent == ROOT / "watchdog"


def test_ruff_is_clean() -> None:
    """ruff check finds nothing in the package, migrations and tests."""
    result = run(str(BIN / "ruff"), "check", "watchdog", "migrations", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict passes on the package."""
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr
