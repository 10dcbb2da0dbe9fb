"""The house keeps its shape: imports point down, nothing imports the lab, the benchmarks are
imported only by the CLI, no file of a package imports itself round in a circle, and every
package's ``__init__`` says what it owns and may import.

Imports are read with ``ast`` (module level and inside functions alike), so no code runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("engines", "retrieval", "service", "training", "toyworld", "ragturbo")
TOP = (*PRODUCT, "bench", "lab")

# What each top-level package may import (besides itself and third-party code).
ALLOWED: dict[str, set[str]] = {
    "engines": set(),
    "retrieval": {"engines"},
    "service": {"retrieval", "engines"},
    "training": {"retrieval", "engines"},
    "toyworld": {"training", "retrieval", "engines"},
    "ragturbo": {"service", "training", "toyworld", "retrieval", "engines", "bench"},
    "bench": set(PRODUCT) - {"ragturbo"},
    "lab": set(TOP) - {"lab"},
}
# The only product file that may import ``bench``: the console script.
BENCH_IMPORTERS = {"ragturbo/cli.py"}
def _sources() -> list[Path]:
    out = []
    for top in TOP:
        for p in sorted((ROOT / top).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if "/tests/" in rel or rel.startswith("lab/archive/"):
                continue
            out.append(p)
    return out


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in mods if m.split(".")[0] in TOP}


def _module_file(mod: str) -> str | None:
    """The repository file that ``mod`` names (a module or a package's __init__), if any."""
    base = ROOT / Path(*mod.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand.relative_to(ROOT).as_posix()
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in _sources():
        rel = p.relative_to(ROOT).as_posix()
        targets = {_module_file(m) for m in _imports(p)}
        graph[rel] = {t for t in targets if t and t != rel and not t.endswith("__init__.py")}
    return graph


def test_imports_point_down_and_nothing_imports_the_lab() -> None:
    wrong = []
    for p in _sources():
        rel = p.relative_to(ROOT).as_posix()
        src = rel.split("/")[0]
        for mod in sorted(_imports(p)):
            dst = mod.split(".")[0]
            if dst == src:
                continue
            if dst not in ALLOWED[src] or (dst == "bench" and src in PRODUCT and rel not in BENCH_IMPORTERS):
                wrong.append(f"{rel} imports {mod}")
    assert not wrong, "imports against the layout (tests/test_layout.py ALLOWED):\n" + "\n".join(wrong)


def test_the_cli_registers_the_benchmarks_and_no_lab_module() -> None:
    from ragturbo.cli import CLI_MODULES

    assert "bench.cli" in CLI_MODULES
    assert not [m for m in CLI_MODULES if m.split(".")[0] == "lab"]


def test_no_import_circles_between_files() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    new = [sorted(c) for c in circles]
    assert not new, f"files that import each other in a circle: {new}"


@pytest.mark.parametrize(
    "package", [*PRODUCT, "bench", "lab", "engines/fast", "engines/backends"]
)
def test_every_package_says_what_it_owns_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    assert "Owns:" in doc and "Imports:" in doc, f"{package}/__init__.py: no 'Owns:'/'Imports:'"
    top = package.split("/")[0]
    if "/" not in package:
        imports_line = doc.split("Imports:", 1)[1]
        named = [p for p in ALLOWED[top] if f"``{p}``" in imports_line]
        missing = sorted(ALLOWED[top] - set(named)) if top not in ("bench", "lab") else []
        assert not missing, f"{package}/__init__.py does not name what it may import: {missing}"
