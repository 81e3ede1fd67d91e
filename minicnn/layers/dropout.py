"""Dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)
(inverted dropout), so evaluation is the identity."""
from __future__ import annotations

from typing import Any

from minicnn import init
from minicnn.layers.base import Layer, grad_enabled


class Dropout(Layer):
    """Randomly zero a fraction ``p`` of the activations while training."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self._cache = None

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        if not self.training or self.p == 0.0:
            self._cache = 1
            return x
        keep = init.device_rng().random(x.shape, dtype=x.dtype) >= self.p
        mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        self._cache = mask if grad_enabled() else None
        return x * mask

    def backward(self, grad_out: Any) -> Any:
        self.check_backward(self._cache)
        mask, self._cache = self._cache, None
        return grad_out if isinstance(mask, int) else grad_out * mask
