"""The pins the Docker image installs with (``constraints.txt``): every distribution the
daemon needs at run time (with the ``postgres`` extra), at the versions installed here.
Regenerate after a dependency change: ``.venv/bin/python -m tests.pins > constraints.txt``."""

from __future__ import annotations

import importlib.metadata as metadata
import re

from packaging.requirements import Requirement

HEADER = (
    "# Pins for the Docker image (`pip install -c constraints.txt '.[postgres]'`).\n"
    "# Regenerate: .venv/bin/python -m tests.pins > constraints.txt\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(
    root: str = "batch-watchdog", extras: tuple[str, ...] = ("postgres",)
) -> dict[str, str]:
    """{distribution: installed version} for ``root`` and everything it pulls in."""
    found: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        found[canonical(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            needed = req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in ("", *wanted)
            )
            if needed and (canonical(req.name) not in found or req.extras):
                todo.append((req.name, tuple(req.extras)))
    found.pop(canonical(root))
    return found


def render() -> str:
    pins = runtime_closure()
    return HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


if __name__ == "__main__":
    print(render(), end="")
