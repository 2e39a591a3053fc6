"""The package reads in one direction: no import cycle between files, nor between parts.

Imports are read from the source (type-only imports under ``TYPE_CHECKING`` and imports
inside functions included), so a cycle hidden behind a lazy import still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trio_tproxy

ROOT = Path(trio_tproxy.__file__).parent
PACKAGE = "trio_tproxy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (``from pkg import name`` of a submodule
    counts as importing that submodule)."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_package, node)
                targets = [target]
                targets += [
                    f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files
                ]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _part(module: str) -> str:
    # trio_tproxy.dns.service -> dns; trio_tproxy.session -> session
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == PACKAGE:
            continue
        edges = parts.setdefault(_part(module), set())
        edges.update(_part(t) for t in targets if t != PACKAGE and _part(t) != _part(module))
    return parts


def test_cycle_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_graph_sees_relative_and_type_only_imports() -> None:
    graph = import_graph()
    assert "trio_tproxy.addr" in graph["trio_tproxy.route.ipset"]
    assert "trio_tproxy.route.engine" in graph["trio_tproxy.route.explain"]


def test_no_cycle_between_files() -> None:
    graph = import_graph()
    # A package's __init__ re-exporting its submodules is not a cycle of design; its
    # submodules importing the package (``from . import x``) would be, and are kept.
    for name in list(graph):
        if (ROOT.parent / name.replace(".", "/") / "__init__.py").exists():
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert find_cycle(graph) is None


def test_address_leaves_import_nothing_of_ours() -> None:
    graph = import_graph()
    assert graph["trio_tproxy.addr"] == set()
    assert graph["trio_tproxy.sock"] <= {"trio_tproxy.addr"}


def test_no_cycle_between_parts() -> None:
    assert find_cycle(part_graph(import_graph())) is None
