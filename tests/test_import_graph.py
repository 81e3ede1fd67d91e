"""The architecture, as rules between subpackages, and no import cycle.

Each subpackage of minicnn is one layer of the stack and imports only those below it
(``MAY_IMPORT``); imports inside functions count. Edges come from the AST of every module:
``import minicnn.a.b``, ``from minicnn.a import b`` (an edge to ``minicnn.a.b`` when b is a
module, else to ``minicnn.a``), wherever they stand.
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


# Which group may import which: the stack from the bottom up. ``minicnn`` is the package's
# __init__ (the public names); ``models`` is minicnn/models.py.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),                                    # arrays, modes, random state, atomic writes
    "kernels": {"core"},                              # im2col/col2im, CUDA, BLAS, allocator
    "layers": {"core", "kernels"},                    # the protocol, initialisers, each layer
    "testing": {"core", "layers"},                    # gradcheck
    "data": {"core"},                                 # loader, transforms, IDX, data sets, images
    "saving": {"core", "data", "layers"},             # checkpoints and their bounded readers
    "training": {"core", "kernels", "layers", "data", "saving"},  # losses ... the loop
    "models": {"core", "layers", "training"},         # Network, Sequential, Model
    "zoo": {"core", "layers", "models", "training"},  # named models
    "onnx": {"core", "data", "layers", "models", "saving"},       # the exporter uses the models
    "viz": {"core", "data", "kernels", "layers", "models"},       # pictures
    "minicnn": {"core", "kernels", "layers", "testing", "data", "saving", "training", "models",
                "zoo", "onnx", "viz"},               # the public names: never the tools
    "tools": {"minicnn", "core", "kernels", "layers", "testing", "data", "saving", "training",
              "models", "zoo", "onnx", "viz"},
    "cli": {"minicnn", "core", "kernels", "layers", "testing", "data", "saving", "training",
            "models", "zoo", "onnx", "viz", "tools"},
}


def group_of(module: str) -> str:
    """'minicnn.training.loop' -> 'training'; the package itself -> 'minicnn'."""
    if module == "minicnn":
        return "minicnn"
    if module == "minicnn.__main__":
        return "cli"
    return module.split(".")[1]


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b (group A may not import group B)' for every import the rules do not allow."""
    found = []
    for name in sorted(graph):
        for target in sorted(graph[name]):
            a, b = group_of(name), group_of(target)
            if a != b and b not in MAY_IMPORT.get(a, set()):
                found.append(f"{name} -> {target} ({a} may not import {b})")
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_finds_a_forbidden_import():
    graph = {"minicnn.core.backend": {"minicnn.layers.base"}, "minicnn.layers.base": set(),
             "minicnn.cli.train": {"minicnn.core.backend"}}
    assert forbidden_imports(graph) == [
        "minicnn.core.backend -> minicnn.layers.base (core may not import layers)"]


def test_minicnn_has_no_import_cycle():
    graph = import_graph()
    assert "minicnn.layers.base" in graph and "minicnn.models" in graph
    assert cycles(graph) == []


def test_the_rules_are_a_stack():
    """The rules themselves have no cycle, and every group has a rule."""
    assert cycles(MAY_IMPORT) == []
    assert {group_of(name) for name in import_graph()} == set(MAY_IMPORT)


def test_each_group_imports_only_those_below_it():
    assert forbidden_imports(import_graph()) == []


def test_few_files_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "models.py"]
