"""``Activation``: the base of shape-preserving activations, ``y = apply(x)`` and
``dx = derivative(x, y, dy)``, keeping for backward only what the derivative needs."""
from __future__ import annotations

from typing import Any

from minicnn.layers.base import Layer

__all__ = ["Activation"]


class Activation(Layer, abstract=True):
    """Base for shape-preserving activations: ``apply(x)`` and ``derivative(x, y, dy)``; of
    x and y, ``derivative`` gets only those named in ``keeps`` (the other is None)."""

    per_sample = True
    keeps: tuple[str, ...] = ("input", "output")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        y = self.apply(x)
        keeps = self.keeps
        self.save_for_backward(x if "input" in keeps else None, y if "output" in keeps else None)
        return y

    def backward(self, grad_out: Any) -> Any:
        x, y = self.pop_saved()
        return self.derivative(x, y, grad_out)

    def apply(self, x: Any) -> Any:
        raise NotImplementedError

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        raise NotImplementedError
