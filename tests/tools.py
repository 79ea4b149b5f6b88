"""System tools the suite needs from Debian's packages (.ci/run installs them): found,
or the test is skipped with the reason — except under CI=true, where it fails."""

from __future__ import annotations

import glob
import os
import shutil

import pytest


def missing(what: str, package: str) -> None:
    """Skip (or, under CI, fail) a test that needs ``what``."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is not installed (.ci/run installs Debian's {package})")
    pytest.skip(f"{what} is not installed on this machine")


def command(*names: str, package: str) -> str:
    """The first of ``names`` on PATH."""
    for name in names:
        if path := shutil.which(name):
            return path
    missing(names[0], package)
    raise AssertionError("unreachable")


def library(pattern: str, package: str) -> str:
    """A shared library by glob (e.g. libfaketime under /usr/lib/*/faketime/)."""
    found = sorted(glob.glob(pattern))
    if not found:
        missing(pattern.rsplit("/", 1)[-1], package)
    return found[0]
