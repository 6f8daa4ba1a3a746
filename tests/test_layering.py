"""The package's layering: the pure core imports no I/O library, and no module imports itself back.

The pure core (`clipfarm_fusion/core/`: vector decoding, metadata parsing, the work-list and gating
rules, fusion and projection math, the latest-row rule, the known-id index, the storage layout) must stay importable and testable
without boto3, SQLAlchemy, Dagster or deltalake, and the import graph must stay a DAG so every module
can be read (and imported) after the ones it builds on.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import clipfarm_fusion

pytestmark = pytest.mark.fast  # the fast loop: pure and unit tests (README: Development)

PACKAGE = "clipfarm_fusion"
PACKAGE_DIR = Path(clipfarm_fusion.__file__).parent
PURE_CORE = sorted(f"core.{p.stem}" for p in (PACKAGE_DIR / "core").glob("*.py") if p.stem != "__init__")
HEAVY = ("boto3", "botocore", "sqlalchemy", "dagster", "deltalake")


def test_the_core_folder_holds_the_pure_modules():
    """Guards the discovery above: an empty list would pass everything."""
    assert {"core.policy", "core.worklist", "core.kernels", "core.layout"} <= set(PURE_CORE)


@pytest.mark.parametrize("module", ["core", *PURE_CORE])
def test_a_pure_core_module_imports_no_io_library(module):
    """A fresh interpreter, so nothing another test imported hides what this module pulls in."""
    imported = PURE_CORE if module == "core" else [module]  # "core": all of them in one interpreter
    probe = (
        "import importlib, json, sys\n"
        f"[importlib.import_module('{PACKAGE}.' + m) for m in {imported!r}]\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == [], f"importing {PACKAGE}.{module} loads {result.stdout.strip()}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in it (top level, in functions, under
    TYPE_CHECKING): `from . import x`, `from .x import y`, `from .. import x`, `import clipfarm_fusion.x`.
    A name that is not a module counts as an import of the module it is taken from."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
    return (targets & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as `[a, b, ..., a]`, or None when the graph is a DAG (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def test_the_import_graph_finds_the_edges_it_should():
    """Guards the parser above: a graph with no edges would be trivially acyclic."""
    graph = import_graph()
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.config"]
    assert f"{PACKAGE}.run.plan" in graph[f"{PACKAGE}.defs.ops"]
    assert f"{PACKAGE}.admin.migrate" in graph[f"{PACKAGE}.cli.tools"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_a_normal_day_loads_no_seed_era_code():
    """`legacy/` is reached only when a table is missing: the modules a run, the CLI and the Dagster
    definitions load leave it unloaded, and only the two stores it fills import it."""
    probe = (
        "import json, sys\n"
        f"import {PACKAGE}.cli.main, {PACKAGE}.run.pipeline, {PACKAGE}.defs.definitions\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('{PACKAGE}.legacy'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []
    importers = {m for m, targets in import_graph().items() if any(".legacy" in t for t in targets)}
    assert importers - {m for m in importers if ".legacy" in m} == {
        f"{PACKAGE}.stores.state",
        f"{PACKAGE}.stores.manifest",
    }


def test_the_readme_module_map_names_every_module():
    """The README's "Where things are" table is how a newcomer finds code: every subpackage is a row,
    and every module of it is named in that row (so a new or renamed module updates the map)."""
    readme = (PACKAGE_DIR.parent / "README.md").read_text()
    rows = {
        line.split("`")[1].removeprefix(f"{PACKAGE}/").strip("/"): line
        for line in readme.splitlines()
        if line.startswith(f"| `{PACKAGE}/")
    }
    packages = sorted(p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").exists())
    assert set(packages) <= set(rows), f"subpackages missing from the README map: {set(packages) - set(rows)}"
    missing = [
        f"{package}.{module.stem}"
        for package in packages
        for module in (PACKAGE_DIR / package).glob("*.py")
        if module.stem != "__init__" and f"`{module.stem}`" not in rows[package]
    ]
    assert not missing, f"modules the README map does not name: {missing}"
