"""Element-wise activations and Softmax: y = f(x), dx = f'(x) * dy.

Each keeps only what its derivative needs (``keeps``): the output for ReLU, Sigmoid, Tanh and
Softmax, the input for LeakyReLU, nothing for Identity; what it does not keep can be freed.
``get_activation("relu")`` turns a name into a layer (used by Dense).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers.base import Layer


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


class ReLU(Activation):
    """max(x, 0)."""

    keeps = ("output",)

    def apply(self, x):
        return backend.get_array_module(x).maximum(x, 0)

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


class Softmax(Activation):
    """exp(x) / sum(exp(x)) along ``axis`` (default 1, the class axis), shifted for stability."""

    keeps = ("output",)

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    @property
    def per_sample(self) -> bool:  # type: ignore[override]  # computed: from the axis
        return self.axis > 0                         # axis 0 (or -ndim) mixes the samples

    def apply(self, x):
        xp = backend.get_array_module(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self.label()}: expected an input with an axis {self.axis}, got "
                             f"shape {tuple(x.shape)}")
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)

    def derivative(self, x, y, grad_out):
        return y * (grad_out - (grad_out * y).sum(axis=self.axis, keepdims=True))


class Identity(Activation):
    """y = x (the 'linear' activation)."""

    keeps = ()

    def apply(self, x):
        return x

    def derivative(self, x, y, grad_out):
        return grad_out


ACTIVATIONS: dict[str, type[Activation]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh,
    "softmax": Softmax, "linear": Identity, "identity": Identity,
}


def get_activation(activation: str | Layer | None) -> Layer | None:
    """A layer for an activation name ('relu', 'sigmoid', ...), a layer object, or None."""
    if activation is None or isinstance(activation, Layer):
        return activation
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return ACTIVATIONS[activation.lower()]()
    raise ValueError(f"unknown activation {activation!r}: expected one of "
                     f"{sorted(ACTIVATIONS)} or a Layer")
