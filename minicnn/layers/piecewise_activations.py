"""Piecewise activations, as PyTorch defines them: ReLU6, Hardswish and PReLU (a learned slope
per channel). Gradients at the kinks are PyTorch's; each exports to ONNX through ``to_onnx``."""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers import initializers
from minicnn.layers.activation_base import Activation
from minicnn.layers.base import Parameter

__all__ = ["ReLU6", "Hardswish", "PReLU"]


class ReLU6(Activation):
    """min(max(x, 0), 6); the gradient is 1 strictly between 0 and 6, else 0."""

    keeps = ("input",)

    def apply(self, x: Any) -> Any:
        c = x.dtype.type
        return backend.get_array_module(x).clip(x, c(0), c(6))

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        c = x.dtype.type
        return grad_out * ((x > c(0)) & (x < c(6)))

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """Clip with min and max as inputs (as from opset 11)."""
        lo = ctx.add_initializer(f"{ctx.name}.min", 0.0)       # written as float32
        hi = ctx.add_initializer(f"{ctx.name}.max", 6.0)
        return str(ctx.add_node("Clip", [inputs[0], lo, hi], [ctx.name])[0])


class Hardswish(Activation):
    """x * relu6(x + 3) / 6; the gradient is 0 below -3, x/3 + 1/2 on [-3, 3], 1 above 3."""

    keeps = ("input",)

    def apply(self, x: Any) -> Any:
        c = x.dtype.type
        gate = x + c(3)
        backend.get_array_module(x).clip(gate, c(0), c(6), out=gate)
        gate *= x
        gate *= c(1 / 6)
        return gate

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        xp = backend.get_array_module(x)
        c = x.dtype.type
        g = x * c(1 / 3)
        g += c(0.5)
        g = xp.where(x < c(-3), c(0), xp.where(x > c(3), c(1), g))
        g *= grad_out
        return g

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """HardSwish from opset 14; before, x * HardSigmoid(x; 1/6, 1/2)."""
        if ctx.opset >= 14:
            return str(ctx.add_node("HardSwish", [inputs[0]], [ctx.name])[0])
        gate = ctx.add_node("HardSigmoid", [inputs[0]], [f"{ctx.name}.gate"], alpha=1 / 6,
                            beta=0.5)[0]
        return str(ctx.add_node("Mul", [inputs[0], gate], [ctx.name])[0])


class PReLU(Activation):
    """x for x > 0, weight[c] * x otherwise, c the index along axis 1 (the channels); one
    weight shared by all channels when ``num_parameters`` is 1.

    weight: (num_parameters,), starting at ``init``. Input (N, C, ...) (or any shape with one
    parameter); ``num_parameters`` must be 1 or C.
    """

    keeps = ("input",)

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        super().__init__()
        if not isinstance(num_parameters, int) or isinstance(num_parameters, bool) or \
                num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be a positive int, got "
                             f"{num_parameters!r}")
        if not isinstance(init, int | float) or isinstance(init, bool):
            raise ValueError(f"PReLU: init must be a number, got {init!r}")
        self.num_parameters = num_parameters
        self.weight = Parameter(initializers.ones((num_parameters,)) * init, "weight")

    def _slope(self, x: Any) -> Any:
        """The weight shaped to broadcast over x: (1, C, 1, ...)."""
        n = self.num_parameters
        if n == 1:
            return self.weight.data
        if x.ndim < 2 or x.shape[1] != n:
            raise ValueError(f"{self.label()}: expected an input (N, {n}, ...) with {n} "
                             f"channels on axis 1, got shape {tuple(x.shape)}")
        return self.weight.data.reshape((1, n) + (1,) * (x.ndim - 2))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        n = self.num_parameters
        if n != 1 and (len(input_shape) < 1 or input_shape[0] != n):
            raise ValueError(f"{self.label()}: expected {n} channels (C, ...), got input "
                             f"shape {tuple(input_shape)}")
        return tuple(input_shape)

    def apply(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        return xp.where(x > 0, x, x * self._slope(x))

    def derivative(self, x: Any, y: Any, grad_out: Any) -> Any:
        xp = backend.get_array_module(x)
        negative = xp.where(x > 0, x.dtype.type(0), x * grad_out)
        if self.num_parameters == 1:
            self.weight.grad += negative.sum()
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            self.weight.grad += negative.sum(axis=axes)
        return xp.where(x > 0, grad_out, grad_out * self._slope(x))

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """PRelu; a per-channel slope is reshaped in the graph to (C, 1, ...) for the input's
        rank, so it broadcasts over (N, C) and (N, C, H, W) alike."""
        x, n = inputs[0], ctx.name
        slope = ctx.add_initializer(f"{n}.weight", self.weight.data)
        if self.num_parameters > 1:
            shape = ctx.add_node("Shape", [x], [f"{n}.shape"])[0]
            rank = ctx.add_node("Shape", [shape], [f"{n}.rank"])[0]
            two = ctx.add_initializer(f"{n}.two", backend.to_numpy([2]).astype("int64"))
            trailing = ctx.add_node("Sub", [rank, two], [f"{n}.trailing"])[0]
            ones = ctx.add_node("ConstantOfShape", [trailing], [f"{n}.ones"],
                                value=ctx.onnx.helper.make_tensor(
                                    "value", ctx.onnx.TensorProto.INT64, [1], [1]))[0]
            channels = ctx.add_initializer(
                f"{n}.channels", backend.to_numpy([self.num_parameters]).astype("int64"))
            target = ctx.add_node("Concat", [channels, ones], [f"{n}.slope_shape"], axis=0)[0]
            slope = ctx.add_node("Reshape", [slope, target], [f"{n}.slope"])[0]
        return str(ctx.add_node("PRelu", [x, slope], [n])[0])
