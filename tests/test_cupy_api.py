"""Static check that every array-module call in minicnn exists in CuPy.

minicnn's array code reads the array module as a local ``xp = backend.xp``
(or uses ``backend.xp.NAME`` directly), so the same code runs on NumPy and
CuPy. This test walks the AST of every module under ``minicnn/``, collects
each attribute chain rooted at ``xp`` or ``backend.xp`` (``xp.maximum``,
``xp.lib.stride_tricks.as_strided``, ...) and checks that it resolves on the
``cupy`` module. It needs CuPy installed but no GPU: attribute lookup on
``cupy`` works without a driver.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "minicnn"


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None if the chain is not all names."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


class _XpChainCollector(ast.NodeVisitor):
    """Collect (line, chain) for the longest attribute chains rooted at xp."""

    def __init__(self) -> None:
        self.chains: list[tuple[int, tuple[str, ...]]] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = _dotted(node)
        if parts is not None:
            if parts[0] == "xp":
                rest = parts[1:]
            elif parts[:2] == ["backend", "xp"]:
                rest = parts[2:]
            else:
                rest = []
            if rest:
                self.chains.append((node.lineno, tuple(rest)))
                return  # the inner nodes are prefixes of this chain
        self.generic_visit(node)


def collect_xp_chains(source: str) -> list[tuple[int, tuple[str, ...]]]:
    """Return (line, attribute path after ``xp``) for each use in ``source``."""
    collector = _XpChainCollector()
    collector.visit(ast.parse(source))
    return collector.chains


def _package_chains() -> list[tuple[str, int, tuple[str, ...]]]:
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).as_posix()
        for line, chain in collect_xp_chains(path.read_text(encoding="utf-8")):
            found.append((rel, line, chain))
    return found


def _resolves(module: object, chain: tuple[str, ...]) -> bool:
    obj = module
    for name in chain:
        try:
            obj = getattr(obj, name)
        except AttributeError:
            return False
    return True


def test_collector_finds_chains():
    source = (
        "from minicnn import backend\n"
        "def f(x):\n"
        "    xp = backend.xp\n"
        "    y = xp.maximum(x, 0).sum()\n"
        "    v = xp.lib.stride_tricks.as_strided(x, (2,), (4,))\n"
        "    r = xp.random.default_rng(0)\n"
        "    return backend.xp.float32(y) + other.xp_like.zeros(1)\n"
    )
    chains = [chain for _, chain in collect_xp_chains(source)]
    assert chains == [
        ("maximum",),
        ("lib", "stride_tricks", "as_strided"),
        ("random", "default_rng"),
        ("float32",),
    ]


def test_resolver_reports_missing_names():
    import types

    fake = types.SimpleNamespace(lib=types.SimpleNamespace(ok=1))
    assert _resolves(fake, ("lib", "ok"))
    assert not _resolves(fake, ("lib", "missing"))
    assert not _resolves(fake, ("nope",))


def test_every_xp_chain_exists_in_cupy():
    try:
        import cupy
    except Exception as exc:
        pytest.skip(f"cupy not importable: {exc!r}")
    chains = _package_chains()
    missing = sorted(
        f"{path}:{line}: xp.{'.'.join(chain)}"
        for path, line, chain in chains
        if not _resolves(cupy, chain)
    )
    assert not missing, "not in cupy:\n" + "\n".join(missing)
    distinct = {chain for _, _, chain in chains}
    assert len(chains) > 20, (
        f"only {len(chains)} xp.* uses ({len(distinct)} distinct) found under "
        f"{PACKAGE_DIR}; is the collector still seeing the package?"
    )
