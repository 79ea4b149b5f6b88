"""The package drawn from its imports: modules per folder with their lines, which
folder imports which, and any import against the folder rules. ``python -m
tests.layers`` prints it; tests/test_layers.py holds the rules."""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

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
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 50


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


def functions(path: Path) -> list[tuple[str, int]]:
    """Every function in a module with its length in lines."""
    tree = ast.parse(path.read_text())
    return [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def against_the_rules() -> list[str]:
    """Each import of ours that runs against the folder rules, as a line."""
    found = []
    for name, names in sorted(modules().items()):
        here = name.split("/")[0]
        allowed = MAY_IMPORT.get(here, set()) | {here}
        found += [f"watchdog/{name}.py imports watchdog.{o}" for o in
                  sorted({ours(n) for n in names} - {None} - allowed)]  # fmt: skip
    return found


def main() -> int:
    lines: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        size = len(path.read_text().splitlines())
        lines.setdefault(room(path), []).append((str(path.relative_to(PACKAGE)), size))
    arrows: Counter[tuple[str, str]] = Counter()
    for name, names in modules().items():
        here = name.split("/")[0]
        arrows.update((here, o) for o in {ours(n) for n in names} - {None, here})
    for folder, found in sorted(lines.items(), key=lambda kv: -sum(n for _, n in kv[1])):
        total = sum(n for _, n in found)
        label = f"{folder}/" if (PACKAGE / folder).is_dir() else f"{folder}.py"
        print(f"{label}  {len(found)} modules, {total} lines")
        for module, n in sorted(found, key=lambda m: -m[1]):
            print(f"  {module:<28} {n:>4}")
    print("imports between rooms (importer -> imported: how many modules import it):")
    for (a, b), n in sorted(arrows.items()):
        print(f"  {a} -> {b}: {n}")
    bad = against_the_rules()
    print("against the folder rules:", "none" if not bad else "")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
