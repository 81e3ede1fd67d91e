"""Element-wise activations, Softmax and LogSoftmax: y = f(x), dx = f'(x) * dy.

Each keeps only what its derivative needs (``keeps``): the output for ReLU, Sigmoid, Tanh,
Softmax and LogSoftmax, the input for LeakyReLU, nothing for Identity; what it does not keep
can be freed. The smooth ones (GELU, SiLU, ELU, Softplus) are in
``minicnn.layers.smooth_activations``, ReLU6, Hardswish and PReLU in
``minicnn.layers.piecewise_activations``, the base class in ``minicnn.layers.activation_base``.
``get_activation("relu")`` turns any of their names into a layer (used by Dense).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers.activation_base import Activation
from minicnn.layers.base import Layer
from minicnn.layers.piecewise_activations import Hardswish, PReLU, ReLU6
from minicnn.layers.smooth_activations import ELU, GELU, SiLU, Softplus

__all__ = ["Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Identity", "GELU", "SiLU", "ELU", "Softplus", "ReLU6", "Hardswish", "PReLU",
           "ACTIVATIONS", "get_activation"]


class ReLU(Activation):
    """max(x, 0)."""

    keeps = ("output",)

    def apply(self, x):
        xp = backend.get_array_module(x)
        if x.dtype.kind != "f":
            return xp.maximum(x, 0)
        # clip with an infinite upper bound: NumPy 2.4 vectorises clip's loop and not
        # maximum's against a scalar (64x64x28x28 float32: 0.85 against 1.45 ms)
        return xp.clip(x, x.dtype.type(0), x.dtype.type("inf"))

    def derivative(self, x, y, grad_out):
        return grad_out * (y > 0)


class LeakyReLU(Activation):
    """x for x > 0, negative_slope * x otherwise."""

    keeps = ("input",)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def apply(self, x):
        return backend.get_array_module(x).where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def derivative(self, x, y, grad_out):
        xp = backend.get_array_module(x)
        return xp.where(x > 0, grad_out, grad_out * x.dtype.type(self.negative_slope))


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    keeps = ("output",)

    def apply(self, x):
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))
        return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def derivative(self, x, y, grad_out):
        return grad_out * y * (1 - y)


class Tanh(Activation):
    """tanh(x)."""

    keeps = ("output",)

    def apply(self, x):
        return backend.get_array_module(x).tanh(x)

    def derivative(self, x, y, grad_out):
        return grad_out * (1 - y * y)


class _AlongAxis(Activation, abstract=True):
    """An activation normalising along ``axis`` (Softmax, LogSoftmax): split among threads only
    when that is not the batch axis."""

    keeps = ("output",)

    def __init__(self, axis: int = 1):
        super().__init__()
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"{type(self).__name__}: axis must be an int, got {axis!r}")
        self.axis = axis

    @property
    def per_sample(self) -> bool:  # type: ignore[override]  # computed: from the axis
        return self.axis > 0                         # axis 0 (or -ndim) mixes the samples

    def shifted(self, x: Any) -> Any:
        """x minus its maximum along ``axis``; ValueError naming the layer when x has no such
        axis."""
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self.label()}: expected an input with an axis {self.axis}, got "
                             f"shape {tuple(x.shape)}")
        return x - x.max(axis=self.axis, keepdims=True)


class Softmax(_AlongAxis):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1, the class axis), shifted for stability."""

    def apply(self, x):
        e = backend.get_array_module(x).exp(self.shifted(x))
        return e / e.sum(axis=self.axis, keepdims=True)

    def derivative(self, x, y, grad_out):
        return y * (grad_out - (grad_out * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(_AlongAxis):
    """log(softmax(x)) = x - max - log(sum(exp(x - max))) along ``axis`` (default 1), without
    overflow; the derivative is dy - softmax * sum(dy) (softmax = exp(y))."""

    def apply(self, x):
        xp = backend.get_array_module(x)
        shifted = self.shifted(x)
        shifted -= xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        return shifted

    def derivative(self, x, y, grad_out):
        xp = backend.get_array_module(y)
        return grad_out - xp.exp(y) * grad_out.sum(axis=self.axis, keepdims=True)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        return str(ctx.add_node("LogSoftmax", [inputs[0]], [ctx.name], axis=self.axis)[0])


class Identity(Activation):
    """y = x (the 'linear' activation)."""

    keeps = ()

    def apply(self, x):
        return x

    def derivative(self, x, y, grad_out):
        return grad_out


ACTIVATIONS: dict[str, type[Activation]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh,
    "softmax": Softmax, "log_softmax": LogSoftmax, "linear": Identity, "identity": Identity,
    "gelu": GELU, "silu": SiLU, "elu": ELU, "softplus": Softplus, "relu6": ReLU6,
    "hardswish": Hardswish, "prelu": PReLU,
}


def get_activation(activation: str | Layer | None) -> Layer | None:
    """A layer for an activation name ('relu', 'sigmoid', ...), a layer object, or None."""
    if activation is None or isinstance(activation, Layer):
        return activation
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return ACTIVATIONS[activation.lower()]()
    raise ValueError(f"unknown activation {activation!r}: expected one of "
                     f"{sorted(ACTIVATIONS)} or a Layer")
