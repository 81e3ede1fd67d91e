"""Dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)
(inverted dropout), so evaluation is the identity.

Masks are drawn from minicnn's random generator for the input's array module
(``minicnn.random.rng_for``, seeded by ``minicnn.manual_seed``), so a seeded run is reproducible;
in a batch split among threads each replica draws from its own generator, seeded from the
global one (see ``minicnn.training.parallel``).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend, random
from minicnn.layers.base import Layer


class Dropout(Layer):
    """Randomly zero a fraction ``p`` of the activations while training."""

    per_sample = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)
            return x
        xp = backend.get_array_module(x)
        # generators draw float32 or float64 only: half-precision input draws in float32
        draw = x.dtype if x.dtype.itemsize >= 4 else xp.float32
        keep = random.rng_for(xp).random(x.shape, dtype=draw) >= self.p
        mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad_out: Any) -> Any:
        (mask,) = self.pop_saved()
        return grad_out if mask is None else grad_out * mask
