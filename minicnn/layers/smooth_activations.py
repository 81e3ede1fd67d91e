"""Smooth activations, as PyTorch defines them: GELU (exact or tanh), SiLU, ELU, Softplus.

y = f(x) element-wise, dx = f'(x) * dy. GELU and SiLU keep, besides x, the factor their
derivative shares with the forward (the normal CDF, the sigmoid) so backward does not compute
it again. On NumPy the chains of operations run in cache-sized blocks (``blockwise``).
Each exports to ONNX through ``to_onnx``.
"""
from __future__ import annotations

import math
from typing import Any

from minicnn.core import backend
from minicnn.core.modes import grad_enabled
from minicnn.core.special import ignoring_overflow, normal_cdf
from minicnn.layers.activation_base import Activation
from minicnn.layers.blockwise import blockwise, zeros_like

__all__ = ["GELU", "SiLU", "ELU", "Softplus"]

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_KAPPA = 0.044715


def _scalar(ctx: Any, name: str, value: float) -> str:
    """A 0-d constant for an ONNX graph (written as float32)."""
    return str(ctx.add_initializer(f"{ctx.name}.{name}", float(value)))


def _sigmoid(z: Any, out: Any = None) -> Any:
    """1 / (1 + exp(-z)), in ``out`` if given; exp overflows to inf for z < -88 (float32),
    giving exactly 0."""
    xp = backend.get_array_module(z)
    s = xp.negative(z, out=out)
    with ignoring_overflow(xp):
        xp.exp(s, out=s)
    s += z.dtype.type(1)
    return xp.divide(z.dtype.type(1), s, out=s)      # faster than reciprocal on NumPy 2.4


def _gelu_tanh(x: Any, out: Any = None) -> Any:
    """tanh(sqrt(2/pi) (x + 0.044715 x^3)), the approximate GELU's factor, in ``out`` if
    given."""
    c = x.dtype.type
    inner = backend.get_array_module(x).multiply(x, x, out=out)
    inner *= c(_KAPPA)
    inner += c(1)
    inner *= x
    inner *= c(_SQRT_2_OVER_PI)
    return backend.get_array_module(x).tanh(inner, out=inner)


class _SavesFactor(Activation, abstract=True):
    """An activation whose forward also computes a factor the derivative needs:
    ``apply_with_factor(x, out) -> (y, factor)`` and ``derivative_from(x, factor, dy, out)``;
    ``out``, as ``blockwise(..., into=n)`` passes it, is None or the arrays to fill."""

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        if not grad_enabled():                  # nothing kept: one output array, not two
            return blockwise(self.apply, x, into=1)
        y, factor = blockwise(self.apply_with_factor, x, into=2)
        self.save_for_backward(x, factor)
        return y

    def backward(self, grad_out: Any) -> Any:
        x, factor = self.pop_saved()
        return blockwise(self.derivative_from, x, factor, grad_out, into=1)

    def apply(self, x: Any, out: Any = None) -> Any:
        """y alone (the factor's array can be reused for it), in ``out`` if given."""
        y = self.apply_with_factor(x)[0]
        if out is not None:
            out[...] = y
        return y if out is None else out

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        return self.derivative_from(x, self.apply_with_factor(x)[1], grad_out)

    def apply_with_factor(self, x: Any, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        raise NotImplementedError

    def derivative_from(self, x: Any, factor: Any, grad_out: Any, out: Any = None) -> Any:
        raise NotImplementedError


class GELU(_SavesFactor):
    """x * Phi(x), Phi the standard normal CDF ``(1 + erf(x / sqrt 2)) / 2``; with
    ``approximate="tanh"``, Phi ~ ``(1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``."""

    keeps = ("input",)

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def apply_with_factor(self, x: Any, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        """(y, factor): factor is Phi(x) (exact) or the tanh (approximate); in ``out`` if
        given."""
        xp = backend.get_array_module(x)
        y_out, factor_out = (None, None) if out is None else out
        if self.approximate == "tanh":
            th = _gelu_tanh(x, out=factor_out)
            return self._from_factor(x, xp.add(th, x.dtype.type(1), out=y_out)), th
        cdf = normal_cdf(x)
        if factor_out is not None:
            factor_out[...] = cdf
        return xp.multiply(x, cdf, out=y_out), cdf

    def apply(self, x: Any, out: Any = None) -> Any:
        """y alone, computed in the factor's array (or in ``out``)."""
        xp = backend.get_array_module(x)
        if self.approximate == "tanh":
            th = _gelu_tanh(x, out=out)
            th += x.dtype.type(1)
            return self._from_factor(x, th)
        cdf = normal_cdf(x)
        return xp.multiply(cdf, x, out=cdf if out is None else out)

    @staticmethod
    def _from_factor(x: Any, one_plus_tanh: Any) -> Any:
        """x (1 + tanh) / 2, in one_plus_tanh's array."""
        one_plus_tanh *= x
        one_plus_tanh *= x.dtype.type(0.5)
        return one_plus_tanh

    def derivative_from(self, x: Any, factor: Any, grad_out: Any, out: Any = None) -> Any:
        xp = backend.get_array_module(x)
        c = x.dtype.type
        if self.approximate == "tanh":
            # d/dx of x (1 + t) / 2 = (1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 k x^2) / 2
            g = x * x
            g *= c(3 * _KAPPA)
            g += c(1)
            g *= x
            g *= c(0.5 * _SQRT_2_OVER_PI)
            t = factor * factor                 # one temporary for both factor terms
            xp.subtract(c(1), t, out=t)
            g *= t
            g += xp.multiply(c(0.5), factor, out=t)
            g += c(0.5)
            return xp.multiply(g, grad_out, out=g if out is None else out)
        # Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        g = x * x
        g *= c(-0.5)
        xp.exp(g, out=g)
        g *= x
        g *= c(_INV_SQRT_2PI)
        g += factor
        return xp.multiply(g, grad_out, out=g if out is None else out)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """Gelu from opset 20; before, its definition in Mul, Add, Erf or Tanh nodes."""
        x = inputs[0]
        if ctx.opset >= 20:
            return str(ctx.add_node("Gelu", [x], [ctx.name], approximate=self.approximate)[0])
        n = ctx.name
        if self.approximate == "tanh":
            x2 = ctx.add_node("Mul", [x, x], [f"{n}.x2"])[0]
            x3 = ctx.add_node("Mul", [x2, x], [f"{n}.x3"])[0]
            kx3 = ctx.add_node("Mul", [x3, _scalar(ctx, "kappa", _KAPPA)], [f"{n}.kx3"])[0]
            s = ctx.add_node("Add", [x, kx3], [f"{n}.sum"])[0]
            inner = ctx.add_node("Mul", [s, _scalar(ctx, "scale", _SQRT_2_OVER_PI)],
                                 [f"{n}.inner"])[0]
            t = ctx.add_node("Tanh", [inner], [f"{n}.tanh"])[0]
        else:
            z = ctx.add_node("Mul", [x, _scalar(ctx, "scale", _SQRT_HALF)], [f"{n}.z"])[0]
            t = ctx.add_node("Erf", [z], [f"{n}.erf"])[0]
        one_plus = ctx.add_node("Add", [t, _scalar(ctx, "one", 1.0)], [f"{n}.one_plus"])[0]
        half = ctx.add_node("Mul", [one_plus, _scalar(ctx, "half", 0.5)], [f"{n}.cdf"])[0]
        return str(ctx.add_node("Mul", [x, half], [n])[0])


class SiLU(_SavesFactor):
    """x * sigmoid(x) (also called swish)."""

    keeps = ("input",)

    def apply_with_factor(self, x: Any, out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
        y_out, factor_out = (None, None) if out is None else out
        s = _sigmoid(x, out=factor_out)
        return backend.get_array_module(x).multiply(x, s, out=y_out), s

    def apply(self, x: Any, out: Any = None) -> Any:
        s = _sigmoid(x, out=out)
        s *= x
        return s

    def derivative_from(self, x: Any, factor: Any, grad_out: Any, out: Any = None) -> Any:
        # s (1 + x (1 - s))
        g = x - x * factor
        g += x.dtype.type(1)
        g *= factor
        return backend.get_array_module(x).multiply(g, grad_out, out=g if out is None else out)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        s = ctx.add_node("Sigmoid", [inputs[0]], [f"{ctx.name}.sigmoid"])[0]
        return str(ctx.add_node("Mul", [inputs[0], s], [ctx.name])[0])


class ELU(Activation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise; the derivative there is alpha * exp(x).

    Computed as max(x, 0) + alpha * expm1(min(x, 0)) and, backward, alpha * exp(min(x, 0)) +
    (1 - alpha) [x > 0]: arithmetic instead of ``where``, which is several times slower on
    NumPy for masks that change sign at random."""

    keeps = ("input",)

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if not isinstance(alpha, int | float) or isinstance(alpha, bool) or \
                not math.isfinite(alpha):
            raise ValueError(f"ELU: alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)

    def apply(self, x: Any) -> Any:
        return blockwise(self._apply, x, into=1)

    def _apply(self, x: Any, out: Any = None) -> Any:
        xp = backend.get_array_module(x)
        pos = xp.maximum(x, zeros_like(x), out=out)
        neg = x - pos
        xp.expm1(neg, out=neg)
        if self.alpha != 1:                     # one pass fewer for the default
            neg *= x.dtype.type(self.alpha)
        return xp.add(neg, pos, out=pos)

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        return blockwise(self._derivative, x, grad_out, into=1)

    def _derivative(self, x: Any, grad_out: Any, out: Any = None) -> Any:
        xp = backend.get_array_module(x)
        c = x.dtype.type
        zeros = zeros_like(x)
        g = xp.minimum(x, zeros, out=out)
        xp.exp(g, out=g)
        if self.alpha != 1:                     # for alpha = 1, exp(0) is already the 1 of x > 0
            g *= c(self.alpha)
            g += xp.greater(x, zeros).astype(x.dtype) * c(1 - self.alpha)
        return xp.multiply(g, grad_out, out=g)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        return str(ctx.add_node("Elu", [inputs[0]], [ctx.name], alpha=self.alpha)[0])


class Softplus(Activation):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (as PyTorch);
    computed as (max(z, 0) + log1p(exp(-|z|))) / beta with z = beta x, which never overflows.
    The derivative is sigmoid(beta x) (1 past the threshold)."""

    keeps = ("input",)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        for what, v in (("beta", beta), ("threshold", threshold)):
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"Softplus: {what} must be a finite number, got {v!r}")
        if beta == 0:
            raise ValueError("Softplus: beta must be non-zero, got 0")
        self.beta, self.threshold = float(beta), float(threshold)

    def apply(self, x: Any) -> Any:
        return blockwise(self._apply, x, into=1)

    def _apply(self, x: Any, out: Any = None) -> Any:
        xp = backend.get_array_module(x)
        c = x.dtype.type
        z = x * c(self.beta)
        soft = -xp.abs(z)
        xp.exp(soft, out=soft)
        xp.log1p(soft, out=soft)
        soft += xp.maximum(z, zeros_like(z))
        soft /= c(self.beta)
        linear = xp.greater(z, c(self.threshold)).astype(x.dtype)     # 1 past the threshold
        return xp.add(soft, linear * (x - soft), out=soft if out is None else out)

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        return blockwise(self._derivative, x, grad_out, into=1)

    def _derivative(self, x: Any, grad_out: Any, out: Any = None) -> Any:
        xp = backend.get_array_module(x)
        c = x.dtype.type
        z = x * c(self.beta)
        g = _sigmoid(z)
        g += xp.greater(z, c(self.threshold)).astype(x.dtype) * (c(1) - g)
        return xp.multiply(g, grad_out, out=g if out is None else out)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """ONNX's Softplus has neither beta nor threshold: Where(beta x > threshold, x,
        Softplus(beta x) / beta)."""
        x, n = inputs[0], ctx.name
        beta = _scalar(ctx, "beta", self.beta)
        z = ctx.add_node("Mul", [x, beta], [f"{n}.z"])[0]
        soft = ctx.add_node("Softplus", [z], [f"{n}.softplus"])[0]
        scaled = ctx.add_node("Div", [soft, beta], [f"{n}.scaled"])[0]
        linear = ctx.add_node("Greater", [z, _scalar(ctx, "threshold", self.threshold)],
                              [f"{n}.linear"])[0]
        return str(ctx.add_node("Where", [linear, x, scaled], [n])[0])
