"""Symbolic tensors: placeholders for activations while a graph model is built, Keras-style.

Calling a layer on ``SymbolicTensor`` s records an edge and infers the output shape at once
(``layer.output_shape``), so a graph whose shapes do not fit fails while it is being built::

    x = Input((1, 28, 28))
    h = Conv2D(1, 8, 3, padding=1)(x)      # SymbolicTensor(shape=(8, 28, 28), from=Conv2D)

This module sits below ``Layer``: it needs only a layer's ``output_shape``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SymbolicTensor:
    """A placeholder for an activation while a graph is built: its per-sample shape and origin
    (the layer that computes it and that layer's input tensors; no layer for an ``Input``)."""

    def __init__(self, shape: tuple[int, ...], layer: Any = None,
                 parents: tuple[SymbolicTensor, ...] = ()):
        self.shape, self.layer, self.parents = tuple(shape), layer, parents

    @classmethod
    def from_layer(cls, layer: Any, parents: Sequence[SymbolicTensor]) -> SymbolicTensor:
        """The tensor ``layer`` computes from ``parents``; raises ValueError if shapes misfit."""
        shapes = [p.shape for p in parents]
        try:
            infer = getattr(layer, "infer_output_shape", layer.output_shape)
            shape = infer(*shapes)
        except ValueError as exc:
            raise ValueError(f"cannot connect {layer!r} to input shape(s) "
                             f"{', '.join(map(str, shapes))}: {exc}") from None
        return cls(shape, layer, tuple(parents))

    def __repr__(self) -> str:
        origin = type(self.layer).__name__ if self.layer is not None else "Input"
        return f"SymbolicTensor(shape={self.shape}, from={origin})"


def Input(shape: Sequence[int]) -> SymbolicTensor:
    """The graph's input, with its per-sample shape (batch axis excluded), e.g. (1, 28, 28)."""
    return SymbolicTensor(tuple(int(s) for s in shape))
