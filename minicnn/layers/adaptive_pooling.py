"""Pooling to a fixed output size: GlobalMaxPool2D and AdaptiveAvgPool2D (PyTorch semantics).

``AdaptiveAvgPool2D(output_size)`` averages, for output row ``i`` of ``oh``, the input rows
``floor(i*H/oh)`` to ``ceil((i+1)*H/oh)`` (exclusive), and likewise for columns, as
``torch.nn.AdaptiveAvgPool2d`` does; windows may differ in size and overlap by a row when H is
not a multiple of oh. When the input divides into equal windows (28x28 to 7x7) the layer sums
the window taps as strided slices, as AvgPool2D does. Otherwise it uses that an average over a
rectangle is the row average of the column averages: two matrix products with averaging
matrices, ``y = A_h @ x @ A_w.T`` (``A_h`` is (oh, H), holding 1/len of each window on its
rows), one BLAS call each on NumPy and CuPy, and the backward ``dx = A_h.T @ dy @ A_w``.

ONNX: GlobalMaxPool2D exports through its ``to_onnx``; AdaptiveAvgPool2D through the exporter's
built-in mapping (GlobalAveragePool or AveragePool; unequal windows have no ONNX operator), which
reads the input size the layer's ``output_shape`` last saw (the model's shapes).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels.im2col import IntPair, pair
from minicnn.layers.base import Layer


def adaptive_windows(size: int, out: int) -> tuple[list[int], list[int]]:
    """(starts, ends) of the ``out`` adaptive windows over ``size`` cells: PyTorch's
    ``floor(i*size/out)`` and ``ceil((i+1)*size/out)``."""
    return ([i * size // out for i in range(out)],
            [-(-(i + 1) * size // out) for i in range(out)])


def _averaging_matrix(size: int, out: int) -> list[list[float]]:
    """(out, size) matrix, as lists, whose row i averages window i: 1/len on it, 0 off it."""
    starts, ends = adaptive_windows(size, out)
    return [[1.0 / (end - start) if start <= cell < end else 0.0 for cell in range(size)]
            for start, end in zip(starts, ends)]


def _per_sample_shape(layer: Layer, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{layer.label()}: expected input shape (C, H, W), "
                         f"got {tuple(input_shape)}")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


class GlobalMaxPool2D(Layer):
    """Max over all of H and W: (N, C, H, W) -> (N, C). The gradient goes to the first maximum
    in row-major order (ties as MaxPool2D)."""

    per_sample = True

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (_per_sample_shape(self, input_shape)[0],)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        xp = backend.get_array_module(x)
        rows = x.reshape(n * c, h * w)
        first = rows.argmax(axis=1)                  # the first maximum of each (sample, channel)
        flat = xp.arange(n * c) * (h * w) + first    # its index in the flattened input
        self.save_for_backward(tuple(x.shape), flat)
        return rows.reshape(-1)[flat].reshape(n, c)

    def backward(self, grad_out: Any) -> Any:
        shape, flat = self.pop_saved()
        xp = backend.get_array_module(grad_out)
        dx = xp.zeros(shape, dtype=grad_out.dtype)
        dx.reshape(-1)[flat] = grad_out.reshape(-1)
        return dx

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """GlobalMaxPool gives (N, C, 1, 1); Flatten makes it (N, C)."""
        pooled = ctx.add_node("GlobalMaxPool", [inputs[0]], [f"{ctx.name}.pool"])[0]
        return ctx.add_node("Flatten", [pooled], [ctx.name], axis=1)[0]


class AdaptiveAvgPool2D(Layer):
    """Average over adaptive windows: (N, C, H, W) -> (N, C, oh, ow), ``output_size`` an int
    (square) or a pair (oh, ow); window i along H spans rows floor(i*H/oh) to ceil((i+1)*H/oh)."""

    per_sample = True

    def __init__(self, output_size: IntPair):
        super().__init__()
        self.output_size = pair(output_size, "AdaptiveAvgPool2D output_size")
        if min(self.output_size) < 1:
            raise ValueError(f"AdaptiveAvgPool2D: output_size must be >= 1, "
                             f"got {self.output_size}")
        self._input_hw: tuple[int, int] | None = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = _per_sample_shape(self, input_shape)
        oh, ow = self.output_size
        if h < 1 or w < 1:
            raise ValueError(f"{self.label()}: input {h}x{w} is empty")
        self._input_hw = (h, w)    # what ONNX export reads (the model's shapes)
        return (c, oh, ow)

    def _matrices(self, h: int, w: int, like: Any) -> tuple[Any, Any]:
        """The averaging matrices (oh, H) and (ow, W) in ``like``'s array module and dtype."""
        xp = backend.get_array_module(like)
        oh, ow = self.output_size
        return (xp.asarray(_averaging_matrix(h, oh), dtype=like.dtype),
                xp.asarray(_averaging_matrix(w, ow), dtype=like.dtype))

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        oh, ow = self.output_size
        xp = backend.get_array_module(x)
        self.save_for_backward(tuple(x.shape))
        if h % oh == 0 and w % ow == 0:            # equal windows that tile the input
            kh, kw = h // oh, w // ow
            y = x[:, :, 0::kh, 0::kw].copy()
            for i in range(kh):
                for j in range(kw):
                    if i or j:
                        y += x[:, :, i::kh, j::kw]
            y *= y.dtype.type(1.0 / (kh * kw))
            return y
        rows, cols = self._matrices(h, w, x)
        # columns first: one (N*C*H, W) @ (W, ow) product, then rows: (oh, H) @ (H, N*C*ow)
        by_cols = xp.ascontiguousarray(x).reshape(n * c * h, w) @ cols.T
        by_cols = by_cols.reshape(n * c, h, ow).transpose(1, 0, 2).reshape(h, n * c * ow)
        y = (rows @ by_cols).reshape(oh, n * c, ow).transpose(1, 0, 2)
        return y.reshape(n, c, oh, ow)

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), = self.pop_saved()
        oh, ow = self.output_size
        xp = backend.get_array_module(grad_out)
        if h % oh == 0 and w % ow == 0:            # each cell is in one window of kh*kw cells
            kh, kw = h // oh, w // ow
            scaled = grad_out * grad_out.dtype.type(1.0 / (kh * kw))
            spread = xp.broadcast_to(scaled[:, :, :, None, :, None], (n, c, oh, kh, ow, kw))
            return spread.reshape(n, c, h, w)       # reshape of a broadcast copies
        rows, cols = self._matrices(h, w, grad_out)
        by_cols = xp.ascontiguousarray(grad_out).reshape(n * c * oh, ow) @ cols
        by_cols = by_cols.reshape(n * c, oh, w).transpose(1, 0, 2).reshape(oh, n * c * w)
        dx = (rows.T @ by_cols).reshape(h, n * c, w).transpose(1, 0, 2)
        return dx.reshape(n, c, h, w)
