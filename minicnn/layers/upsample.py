"""Upsample2D: enlarge NCHW images by integer factors, nearest or bilinear, as PyTorch's
``torch.nn.functional.interpolate(x, scale_factor=s, mode=..., align_corners=...)``.

The output is (N, C, H * sh, W * sw). Resizing is separable: forward resizes along W, then
along H; backward applies the adjoint of each step, in reverse order. Along an axis of input
length L, output element d reads:

* nearest: the input at floor(d / s), so forward repeats each element s times and backward
  sums each block of s gradients (one strided slice per phase d mod s);
* bilinear: 1 - f of the input at i = floor(src) and f of the one at i + 1 (clamped to L - 1),
  f = src - i, with src = max((d + 0.5) / s - 0.5, 0) (align_corners=False: half-pixel
  centres) or d * (L - 1) / (s*L - 1) (align_corners=True: corners onto corners). That is one
  (s*L, L) matrix per axis with two non-zeros a row (``bilinear_matrix``), applied in forward
  and its transpose in backward: exactly the adjoint, with no scatter. Up to ``DENSE_MAX``
  inputs along the axis it is one matmul (BLAS); beyond, where a dense matrix costs 2L
  multiply-adds per element, it is a few gathers of each row's non-zeros.
"""
from __future__ import annotations

import functools
import math
from typing import Any

from minicnn.core import backend
from minicnn.layers.base import Layer

MODES = ("nearest", "bilinear")


def _slab(axis: int, index: slice | int) -> tuple[Any, ...]:
    """An index selecting ``index`` along ``axis`` (negative, counted from the end) of an array."""
    return (Ellipsis, index) + (slice(None),) * (-axis - 1)


def _phase_view(y: Any, axis: int, scale: int) -> Any:
    """``y`` (length L * scale along ``axis``) viewed with that axis split into (L, scale):
    phase r of every block is then ``view[_slab(axis, r)]`` (axis counted from the end)."""
    shape = y.shape[:y.ndim + axis] + (y.shape[axis] // scale, scale) + \
        y.shape[y.ndim + axis + 1:]
    return y.reshape(shape)


@functools.lru_cache(maxsize=64)
def _taps(size_in: int, scale: int, align_corners: bool) -> tuple[tuple[int, int, float], ...]:
    """(lower, upper, f) for every output index d along one axis: it reads 1 - f of input
    ``lower`` and f of input ``upper``, by PyTorch's source rule (Python floats: float64)."""
    size_out = size_in * scale
    step = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    taps = []
    for d in range(size_out):
        src = d * step if align_corners else max((d + 0.5) / scale - 0.5, 0.0)
        lower = min(math.floor(src), size_in - 1)
        taps.append((lower, min(lower + 1, size_in - 1), src - lower))
    return tuple(taps)


def _rows(size_in: int, scale: int, align_corners: bool,
          transpose: bool) -> list[list[tuple[int, float]]]:
    """The non-zeros (column, weight) of each row of the interpolation matrix along one axis,
    or of its transpose (a row per input: the outputs that read it)."""
    rows: list[list[tuple[int, float]]] = [[] for _ in range(size_in if transpose else
                                                             size_in * scale)]
    for d, (lower, upper, frac) in enumerate(_taps(size_in, scale, align_corners)):
        for column, weight in ((lower, 1.0 - frac), (upper, frac)):
            if weight != 0.0:                 # f = 0: the upper tap reads nothing
                row, col = (column, d) if transpose else (d, column)
                rows[row].append((col, weight))
    return rows


@functools.lru_cache(maxsize=64)
def _dense_matrix(size_in: int, scale: int, align_corners: bool, transpose: bool, xp: Any,
                  dtype: Any) -> Any:
    """The interpolation matrix (transposed) as a dense ``xp`` array (kept: never written)."""
    rows = _rows(size_in, scale, align_corners, transpose)
    width = size_in * scale if transpose else size_in
    dense = [[0.0] * width for _ in rows]
    for row, entries in zip(dense, rows):
        for column, weight in entries:
            row[column] += weight             # lower == upper at the last input: both add
    return xp.asarray(dense, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _sparse_rows(size_in: int, scale: int, align_corners: bool, transpose: bool, xp: Any,
                 dtype: Any) -> tuple[Any, Any]:
    """The interpolation matrix (transposed) as (columns, weights), both (rows, K) ``xp``
    arrays for the most non-zeros K of any row; shorter rows padded with weight 0 at column
    0 (kept: never written)."""
    rows = _rows(size_in, scale, align_corners, transpose)
    width = max(len(entries) for entries in rows)
    padded = [entries + [(0, 0.0)] * (width - len(entries)) for entries in rows]
    columns = xp.asarray([[c for c, _ in entries] for entries in padded], dtype=xp.int64)
    weights = xp.asarray([[w for _, w in entries] for entries in padded], dtype=dtype)
    return columns, weights


def bilinear_matrix(size_in: int, scale: int, align_corners: bool, xp: Any = None,
                    dtype: Any = None) -> Any:
    """The (size_in * scale, size_in) matrix of PyTorch's bilinear weights along one axis
    (``xp`` the active backend's module and float64 by default): row d holds 1 - f at
    floor(src) and f at floor(src) + 1 (clamped to the last input), with f = src - floor(src)
    and src = max((d + 0.5) / scale - 0.5, 0) (align_corners=False) or
    d * (size_in - 1) / (size_in * scale - 1) (True; 0 for a single output)."""
    xp = backend.xp if xp is None else xp
    dtype = xp.float64 if dtype is None else dtype
    return _dense_matrix(size_in, scale, align_corners, False, xp, xp.dtype(dtype)).copy()


DENSE_MAX = 64
"""Axes up to this long (the input's, forward and backward) are interpolated by one matmul
with the dense matrix: the fastest way for the feature maps CNNs upsample (BLAS beats gathers
up to ~64; beyond, a dense matrix costs 2L multiply-adds per element, and multithreaded BLAS
on large operands stalls badly on a busy machine). Longer ones take K gathers of the matrix's
non-zeros, which cost the same per element at any length."""


def _interpolate_axis(x: Any, axis: int, size_in: int, scale: int, align_corners: bool,
                      transpose: bool) -> Any:
    """``bilinear_matrix`` (transposed for backward) applied along ``axis`` (-1 or -2)."""
    xp = backend.get_array_module(x)
    if size_in <= DENSE_MAX:
        matrix = _dense_matrix(size_in, scale, align_corners, transpose, xp, x.dtype)
        return x @ matrix.T if axis == -1 else matrix @ x
    columns, weights = _sparse_rows(size_in, scale, align_corners, transpose, xp, x.dtype)
    out = None
    for k in range(columns.shape[1]):
        w = weights[:, k] if axis == -1 else weights[:, k, None]
        term = xp.take(x, columns[:, k], axis=axis)
        if out is None:
            out = xp.multiply(term, w, out=term)
        else:
            term *= w
            out += term
    return out


def _resize_axis(x: Any, axis: int, scale: int, mode: str, align_corners: bool) -> Any:
    """Resize ``x`` by ``scale`` along ``axis`` (-1 or -2)."""
    if scale == 1:
        return x
    xp = backend.get_array_module(x)
    if mode == "nearest":
        return xp.repeat(x, scale, axis=axis)
    return _interpolate_axis(x, axis, x.shape[axis], scale, align_corners, False)


def _resize_axis_backward(g: Any, axis: int, scale: int, mode: str, align_corners: bool) -> Any:
    """The adjoint of ``_resize_axis``: the gradient of its input from that of its output."""
    if scale == 1:
        return g
    if mode == "nearest":
        phases = _phase_view(g, axis, scale)
        dx = phases[_slab(axis, 0)] + phases[_slab(axis, 1)]
        for r in range(2, scale):
            dx += phases[_slab(axis, r)]
        return dx
    return _interpolate_axis(g, axis, g.shape[axis] // scale, scale, align_corners, True)


class Upsample2D(Layer):
    """Enlarge (N, C, H, W) images to (N, C, H * sh, W * sw), as PyTorch's ``interpolate``.

    ``scale_factor``: a positive int or a pair (sh, sw) of them; ``mode``: "nearest" (source
    index floor(d / s)) or "bilinear"; ``align_corners`` (bilinear only): False for half-pixel
    centres clamped at 0, True to map the corner pixels onto each other ((L-1)/(s*L-1)).
    """

    per_sample = True

    def __init__(self, scale_factor: int | tuple[int, int] = 2, mode: str = "nearest",
                 align_corners: bool = False):
        super().__init__()
        pair = (scale_factor, scale_factor) if not isinstance(scale_factor, tuple | list) \
            else tuple(scale_factor)
        if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                     for s in pair):
            raise ValueError(f"Upsample2D: scale_factor must be a positive int or a pair of "
                             f"them, got {scale_factor!r}")
        if mode not in MODES:
            raise ValueError(f"Upsample2D: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(align_corners, bool):
            raise TypeError(f"Upsample2D: align_corners must be a bool, got {align_corners!r}")
        if align_corners and mode == "nearest":
            raise ValueError("Upsample2D: align_corners=True needs mode='bilinear' (nearest "
                             "has no corners to align), got mode='nearest'")
        self.scale_factor: tuple[int, int] = (int(pair[0]), int(pair[1]))
        self.mode = mode
        self.align_corners = align_corners

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        c, h, w = input_shape
        sh, sw = self.scale_factor
        return (c, h * sh, w * sw)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        sh, sw = self.scale_factor
        y = _resize_axis(x, -1, sw, self.mode, self.align_corners)
        y = _resize_axis(y, -2, sh, self.mode, self.align_corners)
        self.save_for_backward(tuple(x.shape))
        return y if y is not x else x.copy()

    def backward(self, grad_out: Any) -> Any:
        self.pop_saved()
        sh, sw = self.scale_factor
        g = _resize_axis_backward(grad_out, -2, sh, self.mode, self.align_corners)
        g = _resize_axis_backward(g, -1, sw, self.mode, self.align_corners)
        return g if g is not grad_out else grad_out.copy()

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """ONNX ``Resize`` (opset >= 13: inputs X, roi '', scales) with the coordinate rule
        that matches: nearest "asymmetric" + "floor"; linear "pytorch_half_pixel" (which is
        half_pixel with the clamp at 0) or "align_corners"."""
        sh, sw = self.scale_factor
        scales = ctx.add_initializer(f"{ctx.name}.scales",   # floating point: written float32
                                     backend.to_numpy([1.0, 1.0, sh, sw]))
        if self.mode == "nearest":
            attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"}
        else:
            attrs = {"mode": "linear", "coordinate_transformation_mode":
                     "align_corners" if self.align_corners else "pytorch_half_pixel"}
        return ctx.add_node("Resize", [inputs[0], "", scales], [ctx.name], **attrs)[0]
