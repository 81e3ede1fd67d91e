"""``Parameter``: a trainable array and its gradient; ``column_sums`` for bias gradients.

Kept apart from ``minicnn.layers.base`` (which re-exports both) so the layer tree's walk and the
registry can use them without importing the Layer class.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers import initializers

__all__ = ["Parameter", "column_sums"]


def column_sums(a: Any) -> Any:
    """Sum of a 2-D array's rows, (M, K) -> (K,), as a matrix-vector product: on NumPy that is
    several times faster than ``a.sum(axis=0)`` for tall arrays (bias gradients)."""
    return backend.get_array_module(a).ones(a.shape[0], dtype=a.dtype) @ a


class Parameter:
    """A trainable array ``data`` and the gradient ``grad`` accumulated into it (same shape)."""

    def __init__(self, data: Any, name: str = ""):
        self.data = data
        # a placeholder (see initializers.placeholders) stays one until real data replaces it
        placeholder = initializers.is_placeholder(data)
        self.grad = data if placeholder else backend.module_of(data).zeros_like(data)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.data.dtype})"
