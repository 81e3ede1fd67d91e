"""Flatten: (N, C, H, W) -> (N, C*H*W) in C, H, W order, exactly like ``reshape`` and PyTorch,
so the weights of a following Dense layer carry over between frameworks."""
from __future__ import annotations

import math
from typing import Any

from minicnn.layers.base import Layer


class Flatten(Layer):
    """Keep the batch axis, flatten the rest in C order."""

    per_sample = True

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(input_shape),)

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        if x.ndim < 2:
            raise ValueError(f"{self.label()}: expected at least a 2-D input (N, ...), "
                             f"got shape {tuple(x.shape)}")
        self.save_for_backward(tuple(x.shape))
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, grad_out: Any) -> Any:
        (shape,) = self.pop_saved()
        return grad_out.reshape(shape)
