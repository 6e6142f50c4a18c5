"""The layering of ARCHITECTURE.md holds: no import cycles between tagrank's modules, no import from a
higher floor, and the page names every module (read with ``ast``: nothing is imported or run).

Every ``import`` counts, those inside functions too: a late import still ties the two modules together,
it only hides the tie from Python's loader. Importing a module also runs its package's ``__init__``;
that implicit edge is not counted (a package may import its own modules).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "tagrank"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"

# The floors, lowest first: a module may import modules of its own floor and of the floors below, never
# one above. ``x.*`` is x and every module under it; a plain name is that module alone. A module takes the
# floor of its most specific pattern (``tagrank.models.backbones`` over ``tagrank.models.*``). The same
# table is in ARCHITECTURE.md (a test compares them): change both together.
FLOORS: list[tuple[str, list[str]]] = [
    ("foundation", ["tagrank", "tagrank.errors", "tagrank.quiet", "tagrank.config", "tagrank.metrics", "tagrank.files"]),
    ("networks", ["tagrank.models.backbones"]),
    ("data", ["tagrank.data.*"]),
    ("callbacks", ["tagrank.callbacks", "tagrank.checkpoint"]),
    ("models", ["tagrank.models.*", "tagrank.models.listwise"]),
    ("run", ["tagrank.pipeline", "tagrank.dashboard", "tagrank.loo"]),
    ("report", ["tagrank.report.*"]),
    ("commands", ["tagrank.cli.*"]),
]


@dataclass(frozen=True)
class Import:
    """One ``import`` of a tagrank module: who imports what, where, and whether inside a function."""

    importer: str
    imported: str
    line: int
    late: bool

    def __str__(self) -> str:
        where = f"{path_of(self.importer)}:{self.line}"
        return f"{where} imports {self.imported}" + (" (inside a function)" if self.late else "")


def module_name(path: Path) -> str:
    """``tagrank/data/cache.py`` -> ``tagrank.data.cache``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def path_of(module: str) -> str:
    for candidate in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
        if (ROOT / candidate).exists():
            return candidate
    return module


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> list[Import]:
    """The tagrank modules ``module`` imports, resolving relative imports and ``from pkg import submodule``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    late_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            while name and name not in MODULES:  # `import tagrank.data.cache.x` style: the module it names
                name = name.rpartition(".")[0]
            if name.split(".")[0] == "tagrank" and name != module:
                found.append(Import(module, name, node.lineno, id(node) in late_nodes))
    return found


IMPORTS = [i for m in MODULES for i in imports_of(m)]


def floor_of(module: str) -> tuple[int, str] | None:
    """(floor number, floor name) of the most specific pattern that matches ``module``; None if none does."""
    best = None
    for number, (name, patterns) in enumerate(FLOORS):
        for pattern in patterns:
            prefix = pattern.removesuffix(".*")
            if module == prefix or (pattern.endswith(".*") and module.startswith(prefix + ".")):
                rank = (module == pattern, len(prefix))  # an exact name first, then the longest prefix
                if best is None or rank > best[0]:
                    best = (rank, (number, name))
    return best and best[1]


def test_the_import_reader_sees_the_imports_it_should():
    """The reader is not vacuous: it finds a plain, a relative-style package and a late import."""
    seen = {(i.importer, i.imported, i.late) for i in IMPORTS}
    assert ("tagrank.models.base", "tagrank.metrics", False) in seen
    assert ("tagrank.data.features", "tagrank.data.cache", False) in seen  # from tagrank.data import cache
    assert any(i.late for i in IMPORTS)
    assert len(MODULES) > 40


def test_no_import_cycles_between_tagrank_modules():
    graph = {m: set() for m in MODULES}
    for i in IMPORTS:
        if not (i.importer.startswith(i.imported + ".")):  # a module "imports" its own package: not an edge
            graph[i.importer].add(i.imported)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        cycle = error.args[1][::-1]  # graphlib lists each module before the one that imports it
        steps = [next(str(i) for i in IMPORTS if (i.importer, i.imported) == pair) for pair in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: " + " -> ".join(cycle) + "\n  " + "\n  ".join(steps))


def test_every_module_is_on_a_floor_and_every_floor_pattern_matches_a_module():
    unplaced = [f"{m} ({path_of(m)})" for m in MODULES if floor_of(m) is None]
    assert not unplaced, ("modules on no floor: add them to FLOORS in tests/test_architecture.py and to "
                          "ARCHITECTURE.md: " + ", ".join(unplaced))
    stale = [p for _, patterns in FLOORS for p in patterns
             if not any(m == p.removesuffix(".*") or m.startswith(p.removesuffix(".*") + ".") for m in MODULES)]
    assert not stale, f"FLOORS names modules that do not exist (moved or removed?): {', '.join(stale)}"


def test_no_module_imports_from_a_higher_floor():
    upward = []
    for i in IMPORTS:
        (low, low_name), (high, high_name) = floor_of(i.importer), floor_of(i.imported)
        if high > low:
            upward.append(f"{i}: floor {low} '{low_name}' may not import floor {high} '{high_name}'")
    assert not upward, "upward imports (move the code down, or change FLOORS and ARCHITECTURE.md):\n  " + \
        "\n  ".join(upward)


def documented_floors() -> list[tuple[str, list[str]]]:
    """The floors table of ARCHITECTURE.md: rows ``| number | name | `pattern`, `pattern` |``."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|([^|]*)\|", ARCHITECTURE.read_text(), re.M)
    assert [int(n) for n, _, _ in rows] == list(range(len(rows))), "ARCHITECTURE.md: floors numbered 0, 1, 2, ..."
    return [(name, re.findall(r"`([^`]+)`", patterns)) for _, name, patterns in rows]


def test_architecture_md_has_the_same_floors_as_this_test():
    assert documented_floors() == FLOORS, "ARCHITECTURE.md's floors table and FLOORS here differ"


def test_architecture_md_names_every_module():
    text = ARCHITECTURE.read_text()

    def named(module: str) -> bool:
        names = [module, path_of(module)]
        return any(re.search(rf"(?<![\w./]){re.escape(n)}(?![\w/]|\.\w)", text) for n in names)

    missing = [f"{m} ({path_of(m)})" for m in MODULES if not named(m)]
    assert not missing, "ARCHITECTURE.md does not name: " + ", ".join(missing)
