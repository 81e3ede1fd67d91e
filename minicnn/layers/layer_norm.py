"""LayerNorm and GroupNorm: normalise each sample on its own (PyTorch's semantics).

* ``LayerNorm(normalized_shape)`` normalises over the trailing dims ``normalized_shape`` of
  (N, ..., *normalized_shape) input, with an element-wise weight and bias of that shape.
* ``GroupNorm(num_groups, num_channels)`` splits the C channels of (N, C, ...) input into
  ``num_groups`` groups of consecutive channels and normalises each sample's group over its
  channels and positions, with a per-channel weight and bias (C,).

Both use the biased variance and the arithmetic of ``minicnn.layers.normalization``
(``normalize`` / ``normalize_backward``, float32 statistics for float16 input). Neither keeps
running statistics, and training and evaluation compute the same thing. Each sample's output
depends on that sample alone, so a model may split a batch among threads (``per_sample``).
"""
from __future__ import annotations

import math
from typing import Any

from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter
from minicnn.layers.normalization import (
    normalize,
    normalize_affine,
    normalize_backward,
    scale_shift,
)

__all__ = ["LayerNorm", "GroupNorm"]


def _positive_int(layer: str, what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {value!r}")
    return value


def _check_eps(layer: str, eps: Any) -> float:
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{layer}: eps must be a positive number, got {eps!r}")
    return float(eps)


class LayerNorm(Layer):
    """y = weight * (x - mean) / sqrt(var + eps) + bias, mean and var over the trailing dims
    ``normalized_shape`` (an int or a tuple) of each sample; weight, bias: normalized_shape
    (``elementwise_affine=False``: none)."""

    per_sample = True

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True):
        super().__init__()
        dims = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        if not isinstance(dims, tuple | list) or not dims:
            raise ValueError(f"LayerNorm: normalized_shape must be a positive int or a "
                             f"non-empty tuple of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(_positive_int("LayerNorm", "normalized_shape", d)
                                      for d in dims)
        self.eps = _check_eps("LayerNorm", eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = Parameter(initializers.ones(self.normalized_shape), "weight") \
            if elementwise_affine else None
        self.bias = Parameter(initializers.zeros(self.normalized_shape), "bias") \
            if elementwise_affine else None

    def _expected(self) -> str:
        return f"(N, ..., {', '.join(map(str, self.normalized_shape))})"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        k = len(self.normalized_shape)
        if tuple(input_shape[-k:]) != self.normalized_shape or len(input_shape) < k:
            raise ValueError(f"{self.label()}: expected input shape {self._expected()}, got "
                             f"{tuple(input_shape)} per sample")
        return tuple(input_shape)

    def forward(self, x: Any) -> Any:
        self.check_input(x)
        k = len(self.normalized_shape)
        if x.ndim <= k or tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"{self.label()}: expected input shape {self._expected()}, got "
                             f"{tuple(x.shape)}")
        size = math.prod(self.normalized_shape)
        view = x.reshape(-1, size)                  # one row per normalised slice
        x_hat, inv_std, _, _ = normalize(view, (1,), self.eps)
        self.save_for_backward(x_hat, inv_std)
        weight, bias = self._affine_views(size)
        return scale_shift(x_hat, weight, bias, x.dtype).reshape(x.shape)

    def _affine_views(self, size: int) -> tuple[Any, Any]:
        if self.weight is None or self.bias is None:
            return None, None
        return self.weight.data.reshape(1, size), self.bias.data.reshape(1, size)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        x_hat, inv_std = self.pop_saved()
        weight, _ = self._affine_views(x_hat.shape[1])
        dx, dweight, dbias = normalize_backward(grad_out.reshape(x_hat.shape), x_hat, inv_std,
                                                (1,), weight, (0,), input_grad=input_grad)
        if self.weight is not None and self.bias is not None:
            self.weight.grad += dweight.reshape(self.normalized_shape).astype(
                self.weight.grad.dtype, copy=False)
            self.bias.grad += dbias.reshape(self.normalized_shape).astype(
                self.bias.grad.dtype, copy=False)
        return None if dx is None else \
            dx.astype(grad_out.dtype, copy=False).reshape(grad_out.shape)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """LayerNormalization (opset >= 17), else its decomposition (``onnx_normalize``)."""
        k = len(self.normalized_shape)
        scale, shift = self._onnx_affine(ctx)
        if ctx.opset >= 17:
            return ctx.add_node("LayerNormalization", [inputs[0], scale, shift], [ctx.name],
                                axis=-k, epsilon=self.eps)[0]
        x_hat = onnx_normalize(ctx, inputs[0], list(range(-k, 0)), self.eps)
        scaled = ctx.add_node("Mul", [x_hat, scale], [f"{ctx.name}.scaled"])[0]
        return ctx.add_node("Add", [scaled, shift], [ctx.name])[0]

    def _onnx_affine(self, ctx: Any) -> tuple[str, str]:
        if self.weight is not None and self.bias is not None:
            weight, bias = self.weight.data, self.bias.data
        else:                                       # LayerNormalization needs a Scale
            weight = initializers.ones(self.normalized_shape)
            bias = initializers.zeros(self.normalized_shape)
        return (ctx.add_initializer(f"{ctx.name}.weight", weight),
                ctx.add_initializer(f"{ctx.name}.bias", bias))


class GroupNorm(Layer):
    """y = weight * (x - mean) / sqrt(var + eps) + bias for (N, C, ...) input, mean and var
    over each sample's group of C / num_groups consecutive channels and all positions;
    weight, bias: (C,) (``affine=False``: none)."""

    per_sample = True

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        self.num_groups = _positive_int("GroupNorm", "num_groups", num_groups)
        self.num_channels = _positive_int("GroupNorm", "num_channels", num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_groups must divide num_channels, got "
                             f"num_groups={num_groups} for num_channels={num_channels}")
        self.eps = _check_eps("GroupNorm", eps)
        self.affine = bool(affine)
        self.weight = Parameter(initializers.ones((num_channels,)), "weight") if affine else None
        self.bias = Parameter(initializers.zeros((num_channels,)), "bias") if affine else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if not input_shape or input_shape[0] != self.num_channels:
            raise ValueError(f"{self.label()}: expected input shape ({self.num_channels}, ...) "
                             f"per sample, got {tuple(input_shape)}")
        return tuple(input_shape)

    def _view(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, G, C / G, positions): the statistics are over the last two axes."""
        g = self.num_groups
        return shape[0], g, self.num_channels // g, math.prod(shape[2:])

    def _affine_views(self) -> tuple[Any, Any]:
        if self.weight is None or self.bias is None:
            return None, None
        shape = (1, self.num_groups, self.num_channels // self.num_groups, 1)
        return self.weight.data.reshape(shape), self.bias.data.reshape(shape)

    def forward(self, x: Any) -> Any:
        ndim = getattr(x, "ndim", None)
        self.check_input(x, ndim if ndim and ndim >= 2 else 2, "(N, C, ...)",
                         channels=self.num_channels)
        view = x.reshape(self._view(x.shape))
        weight, bias = self._affine_views()
        y, centred, inv_std, _, _ = normalize_affine(view, (2, 3), self.eps, weight, bias)
        self.save_for_backward(centred, inv_std)
        return y.reshape(x.shape)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        centred, inv_std = self.pop_saved()
        weight, _ = self._affine_views()
        dx, dweight, dbias = normalize_backward(grad_out.reshape(centred.shape), centred,
                                                inv_std, (2, 3), weight, (0, 3),
                                                input_grad=input_grad, centred=True)
        if self.weight is not None and self.bias is not None:
            c = self.num_channels
            self.weight.grad += dweight.reshape(c).astype(self.weight.grad.dtype, copy=False)
            self.bias.grad += dbias.reshape(c).astype(self.bias.grad.dtype, copy=False)
        return None if dx is None else \
            dx.astype(grad_out.dtype, copy=False).reshape(grad_out.shape)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """Reshape to (N, G, -1), normalise the last axis, reshape to (N, C, -1) for the
        per-channel weight and bias, then back to the input's shape. (ONNX's own
        GroupNormalization changed its scale's meaning from per group to per channel between
        opsets 18 and 21, so the decomposition is what every runtime agrees on.)"""
        x = inputs[0]
        name = ctx.name
        grouped_shape = onnx_constant(ctx, f"{name}.grouped_shape", [0, self.num_groups, -1])
        grouped = ctx.add_node("Reshape", [x, grouped_shape], [f"{name}.grouped"])[0]
        y = onnx_normalize(ctx, grouped, [2], self.eps)
        if self.weight is not None and self.bias is not None:
            c = self.num_channels
            channel_shape = onnx_constant(ctx, f"{name}.channel_shape", [0, c, -1])
            y = ctx.add_node("Reshape", [y, channel_shape], [f"{name}.channels"])[0]
            weight = ctx.add_initializer(f"{name}.weight", self.weight.data.reshape(c, 1))
            bias = ctx.add_initializer(f"{name}.bias", self.bias.data.reshape(c, 1))
            y = ctx.add_node("Mul", [y, weight], [f"{name}.scaled"])[0]
            y = ctx.add_node("Add", [y, bias], [f"{name}.shifted"])[0]
        shape = ctx.add_node("Shape", [x], [f"{name}.shape"])[0]
        return ctx.add_node("Reshape", [y, shape], [name])[0]


def onnx_normalize(ctx: Any, x: str, axes: list[int], eps: float) -> str:
    """ONNX nodes computing (x - mean) / sqrt(var + eps) over ``axes`` (biased variance):
    ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div. ReduceMean takes its axes as an
    attribute before opset 18 and as an input from 18 on."""
    name = ctx.name

    def mean(value: str, what: str) -> str:
        if ctx.opset >= 18:
            axes_input = onnx_constant(ctx, f"{name}.axes", axes)
            return ctx.add_node("ReduceMean", [value, axes_input], [f"{name}.{what}"],
                                keepdims=1)[0]
        return ctx.add_node("ReduceMean", [value], [f"{name}.{what}"], axes=axes,
                            keepdims=1)[0]

    centered = ctx.add_node("Sub", [x, mean(x, "mean")], [f"{name}.centered"])[0]
    squared = ctx.add_node("Mul", [centered, centered], [f"{name}.squared"])[0]
    eps_value = onnx_constant(ctx, f"{name}.eps", eps)
    var_eps = ctx.add_node("Add", [mean(squared, "var"), eps_value], [f"{name}.var_eps"])[0]
    std = ctx.add_node("Sqrt", [var_eps], [f"{name}.std"])[0]
    return ctx.add_node("Div", [centered, std], [f"{name}.normalized"])[0]


def onnx_constant(ctx: Any, name: str, value: list[int] | float) -> str:
    """An initializer under a fresh name made from ``name``: a 1-D int64 tensor for a list
    (shapes, axes), a float32 scalar for a float (made with onnx's helper: no array needed)."""
    onnx = ctx.onnx
    name = ctx.fresh_name(name)
    if isinstance(value, list):
        tensor = onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [len(value)], value)
    else:
        tensor = onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [float(value)])
    ctx.initializers.append(tensor)
    return name
