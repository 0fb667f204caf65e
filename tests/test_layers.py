"""The package layers point down and nothing reaches into another module's private names.

Layers: model -> stability -> {ablations, reports} -> studies; reports reads the store and never imports the
grid runner (nor the runner the reports). Every executed import counts, also those inside
functions (a lazy import is still a dependency); imports under `if TYPE_CHECKING:` are type hints
only and never run. Also: no import cycle between modules, and no `from other_module import
_private` (a module's underscore names are its own).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"model": 0, "stability": 1, "ablations": 2, "reports": 2, "studies": 3}
APART = {("reports", "ablations"), ("ablations", "reports")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text(), str(path))
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block)
             for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _sources() -> list[Path]:
    return sorted(p for pkg in RANK for p in (ROOT / pkg).rglob("*.py"))


GRAPH = {_module_name(p): _imports(p) for p in _sources()}


def _ours(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in RANK else None


def test_imports_point_down_the_layers():
    bad = []
    for module, imports in GRAPH.items():
        here = _ours(module)
        for target, _, line in imports:
            there = _ours(target)
            if there is None or there == here:
                continue
            if RANK[there] > RANK[here] or (here, there) in APART:
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_module_takes_another_modules_private_names():
    bad = []
    for module, imports in GRAPH.items():
        for target, names, line in imports:
            if _ours(target) and target != module:
                bad += [f"{module}:{line} takes {target}.{n}" for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def _edges() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a `from pkg import sub` counts as pkg.sub)."""
    edges: dict[str, set[str]] = {m: set() for m in GRAPH}
    for module, imports in GRAPH.items():
        for target, names, _ in imports:
            if not _ours(target):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in GRAPH]
            for dep in subs or [target]:
                if dep in GRAPH and dep != module:
                    edges[module].add(dep)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(edges[m]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    edges = _edges()
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for m in edges:
        edges[m] = {d for d in edges[m] if not m.startswith(d + ".")}
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("graph_module", ["stability.cli", "reports.load", "stability.trainer"])
def test_the_walk_sees_real_imports(graph_module):
    """The walk itself can fail: these modules import something of ours."""
    assert any(_ours(t) for t, _, _ in GRAPH[graph_module])
