"""Dropout: in training, zero each element with probability p and scale the rest by 1/(1-p)
(inverted dropout), so evaluation is the identity. Dropout2D zeros whole channels instead (one
draw per sample and channel of an (N, C, H, W) input), as ``torch.nn.Dropout2d``.

Masks are drawn from minicnn's random generator for the input's array module
(``minicnn.random.rng_for``, seeded by ``minicnn.manual_seed``), so a seeded run is reproducible;
in a batch split among threads each replica draws from its own generator, seeded from the
global one (see ``minicnn.training.parallel``).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend, random
from minicnn.layers.base import Layer


def scaled_keep_mask(xp: Any, shape: tuple[int, ...], p: float, dtype: Any) -> Any:
    """An array of ``shape`` and ``dtype``: 0 with probability ``p``, else 1/(1-p)."""
    # generators draw float32 or float64 only: half-precision input draws in float32
    draw = dtype if xp.dtype(dtype).itemsize >= 4 else xp.float32
    keep = random.rng_for(xp).random(shape, dtype=draw) >= p
    return keep * xp.dtype(dtype).type(1.0 / (1.0 - p))


class Dropout(Layer):
    """Randomly zero a fraction ``p`` of the activations while training."""

    per_sample = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{type(self).__name__}: p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def _check(self, x: Any) -> None:
        self.check_input(x)

    def _mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the mask drawn for an input of ``shape`` (broadcast against it)."""
        return shape

    def forward(self, x: Any) -> Any:
        self._check(x)
        if not self.training or self.p == 0.0:
            self.save_for_backward(None)
            return x
        xp = backend.get_array_module(x)
        mask = scaled_keep_mask(xp, self._mask_shape(tuple(x.shape)), self.p, x.dtype)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad_out: Any) -> Any:
        (mask,) = self.pop_saved()
        return grad_out if mask is None else grad_out * mask


class Dropout2D(Dropout):
    """Randomly zero whole channels of (N, C, H, W) input while training: each (sample,
    channel) image is zeroed with probability ``p``, the others scaled by 1/(1-p)."""

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        return tuple(input_shape)

    def _check(self, x: Any) -> None:
        self.check_input(x, 4, "(N, C, H, W)")

    def _mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:2] + (1, 1)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """Inference: no dropout, an ``Identity``."""
        return ctx.add_node("Identity", [inputs[0]], [ctx.name])[0]
