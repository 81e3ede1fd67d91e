"""The import graph of minicnn has no cycle, counting imports inside functions.

Edges come from the AST of every module: ``import minicnn.a.b``, ``from minicnn.a import b``
(an edge to ``minicnn.a.b`` when b is a module, else to ``minicnn.a``), wherever they stand.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minicnn"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """{module: the minicnn modules it imports}."""
    names = module_names()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full if full in names else node.module)
            graph[name] |= {t for t in targets if t in names and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_minicnn_has_no_import_cycle():
    graph = import_graph()
    assert "minicnn.layers.base" in graph and "minicnn.models" in graph
    assert cycles(graph) == []


def test_the_core_looks_down():
    """Symbolic graph building sits below Layer; the training loop never reaches back into
    models; nothing in the core imports the tools."""
    graph = import_graph()
    assert "minicnn.models" not in graph["minicnn.layers.base"]
    assert "minicnn.core.symbolic" in graph["minicnn.layers.base"]
    for low in ("minicnn.training.loop", "minicnn.saving.checkpoint", "minicnn.training.parallel"):
        assert "minicnn.models" not in graph[low], low
    tools = {name for name in graph if name.startswith(("minicnn.tools", "minicnn.cli"))} | \
        {"minicnn.__main__"}
    assert {"minicnn.cli", "minicnn.cli.train", "minicnn.tools.bench"} <= tools
    for name, imported in graph.items():
        if name not in tools and name != "minicnn":
            assert not imported & tools, f"{name} imports a tool: {imported & tools}"
