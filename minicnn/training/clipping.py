"""Gradient clipping, between backward and the optimizer's step, as PyTorch's
``clip_grad_norm_`` / ``clip_grad_value_``::

    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    norm = clip_grad_norm(model.parameters(), max_norm=1.0)   # the norm before clipping
    optimizer.step()

``clip_grad_norm`` scales every gradient by max_norm / (norm + 1e-6) when the global L2 norm
over all of them exceeds max_norm; ``clip_grad_value`` clamps each element to [-v, v]. Both
work in place on the gradients' own array module and dtype, and return without reading
anything back to the host (the norm is a 0-d array). ``GradientClip`` is what ``fit(...,
clip_norm=, clip_value=)`` runs each step: it also keeps the norms' sum and maximum on the
device until the loop reads them with the step losses (``grad_norm``, ``grad_norm_max`` in
each epoch's record).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from minicnn.core import backend
from minicnn.layers.parameter import Parameter

__all__ = ["clip_grad_norm", "clip_grad_value", "GradientClip", "global_norm"]


def global_norm(params: Iterable[Parameter]) -> Any:
    """sqrt(sum over parameters of sum(grad ** 2)): a 0-d array on the gradients' device."""
    grads = [p.grad for p in params]
    if not grads:
        raise ValueError("clip_grad_norm: got an empty parameter list")
    xp = backend.get_array_module(grads[0])
    squares = [xp.vdot(g.ravel(), g.ravel()) for g in grads]
    return xp.sqrt(xp.stack(squares).sum())


def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> Any:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)); return the norm before."""
    params = list(params)
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"clip_grad_norm: expected max_norm > 0, got {max_norm!r}")
    norm = global_norm(params)
    xp = backend.get_array_module(norm)
    factor = xp.minimum(norm.dtype.type(max_norm) / (norm + norm.dtype.type(1e-6)), 1)
    for p in params:
        p.grad *= factor.astype(p.grad.dtype, copy=False)
    return norm


def clip_grad_value(params: Iterable[Parameter], clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value], in place."""
    if not (math.isfinite(clip_value) and clip_value > 0):
        raise ValueError(f"clip_grad_value: expected clip_value > 0, got {clip_value!r}")
    for p in params:
        backend.get_array_module(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)


class GradientClip:
    """Clip by value (first, if given), then by global norm (if given); keep each step's norm.

    ``norm`` and ``value`` are ``fit``'s ``clip_norm`` and ``clip_value``; the norm recorded
    is the one ``clip_grad_norm`` sees (after value clipping), or the plain global norm.
    """

    def __init__(self, norm: float | None = None, value: float | None = None):
        for what, v in (("clip_norm", norm), ("clip_value", value)):
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"fit: {what} must be a number > 0, got {v!r}")
        if norm is None and value is None:
            raise ValueError("GradientClip: give norm or value")
        self.norm, self.value = norm, value
        self._sum: Any = None
        self._max: Any = None
        self.count = 0

    def __call__(self, params: list[Parameter]) -> Any:
        """Clip ``params``' gradients in place; returns the global norm (0-d, on the device)."""
        if self.value is not None:
            clip_grad_value(params, self.value)
        norm = clip_grad_norm(params, self.norm) if self.norm is not None else \
            global_norm(params)
        xp = backend.get_array_module(norm)
        self._sum = norm if self._sum is None else self._sum + norm
        self._max = norm if self._max is None else xp.maximum(self._max, norm)
        self.count += 1
        return norm

    def drain(self) -> tuple[float, float, int]:
        """(sum, max, count) of the norms since the last drain, read to the host; resets."""
        if not self.count:
            return 0.0, 0.0, 0
        out = (float(self._sum), float(self._max), self.count)
        self._sum = self._max = None
        self.count = 0
        return out
