"""What an operator's import function sees: the node (``NodeView``) and the graph so far
(``ImportContext``), and the one error an import stops with (``OnnxImportError``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy

from minicnn.core import backend
from minicnn.core.symbolic import SymbolicTensor
from minicnn.layers.parameter import Parameter


class OnnxImportError(ValueError):
    """An ONNX file minicnn cannot import (unreadable, over a budget, or a node whose operator
    or attribute minicnn lacks); the message is one line naming the file, and the node and
    operator when one is at fault."""


@dataclass
class NodeView:
    """One ONNX node as plain Python: ``attrs`` holds its attributes' values (ints, floats,
    lists, NumPy arrays for tensors)."""

    index: int
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int

    @property
    def label(self) -> str:
        return f"node {self.name!r} ({self.op_type})" if self.name else \
            f"node #{self.index} ({self.op_type}, output {self.outputs[0]!r})" \
            if self.outputs else f"node #{self.index} ({self.op_type})"

    def refuse(self, what: str) -> NoReturn:
        raise OnnxImportError(f"{self.label}: {what}")

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def ints(self, key: str, default: list[int]) -> list[int]:
        value = self.attrs.get(key)
        return list(default) if value is None else [int(v) for v in value]


@dataclass
class ImportContext:
    """The values computed so far: ``consts`` (NumPy arrays known at import time) and
    ``tensors`` (symbolic tensors computed by layers; per-sample shapes, the batch axis
    implicit). ``fused`` maps a node index to the tensor an earlier node already computed
    for it (MatMul + Add as one Dense), or None for a node inside such a pattern."""

    nodes: list[NodeView]
    graph_outputs: set[str]
    consts: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, SymbolicTensor] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    fused: dict[int, SymbolicTensor | None] = field(default_factory=dict)
    batch: int | None = None

    def has(self, name: str) -> bool:
        return name in self.consts or name in self.tensors

    def is_const(self, node: NodeView, i: int) -> bool:
        return i < len(node.inputs) and node.inputs[i] in self.consts

    def tensor(self, node: NodeView, i: int = 0) -> SymbolicTensor:
        """Input ``i`` of ``node``, which must be computed by the graph (not a constant)."""
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name in self.tensors:
            return self.tensors[name]
        if name in self.consts:
            node.refuse(f"input {i} ({name!r}) is a constant; minicnn has no layer taking a "
                        "constant there")
        node.refuse(f"input {i} is missing")

    def const(self, node: NodeView, i: int, what: str) -> Any:
        """Input ``i`` of ``node`` (its ``what``), which must be a constant (an initializer)."""
        value = self.optional_const(node, i, what)
        if value is None:
            node.refuse(f"input {i} ({what}) is missing")
        return value

    def optional_const(self, node: NodeView, i: int, what: str) -> Any:
        name = node.inputs[i] if i < len(node.inputs) else ""
        if not name:
            return None
        if name not in self.consts:
            node.refuse(f"input {i} ({what}, {name!r}) must be a constant (an initializer): "
                        "minicnn learns it as a parameter")
        return self.consts[name]

    def used(self, name: str) -> bool:
        """Whether a value is read by a node or is a graph output."""
        return bool(name) and (name in self.graph_outputs or bool(self.consumers.get(name)))


def full_shape(tensor: SymbolicTensor) -> str:
    """The ONNX view of a symbolic tensor's shape, e.g. '(N, 3, 8, 8)'."""
    return "(" + ", ".join(["N"] + [str(d) for d in tensor.shape]) + ")"


def set_parameter(node: NodeView, param: Parameter | None, value: Any, what: str) -> None:
    """Copy ``value`` into ``param`` (same shape, the parameter's dtype and array module)."""
    if param is None:
        node.refuse(f"{what} given but the layer has none")
    value = numpy.asarray(value)
    if tuple(value.shape) != tuple(param.data.shape):
        node.refuse(f"{what} has shape {tuple(value.shape)}, expected "
                    f"{tuple(param.data.shape)}")
    xp = backend.get_array_module(param.data)
    param.data[...] = xp.asarray(value.astype(param.data.dtype))


def state_array(param_like: Any, value: Any) -> Any:
    """``value`` as an array of the dtype and module of ``param_like`` (for state arrays)."""
    xp = backend.get_array_module(param_like)
    return xp.asarray(numpy.asarray(value).astype(param_like.dtype))
