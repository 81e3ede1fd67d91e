"""CUDA kernels for the channels-last (NHWC) convolution and pooling paths: thin Python
wrappers that compile the sources of ``minicnn.kernels.cuda_sources`` with CuPy (NVRTC) on
first use, pick the instantiation for the array's dtype (float16, float32, float64) and launch
it. The conventions every kernel follows (one thread per output element, gathers without
atomics, the im2col column layout) are in ``cuda_sources``' docstring.

``cupy`` is imported lazily, so this module imports on machines without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from minicnn.kernels.cuda_sources import (
    HALF_UNIT_SUFFIX,
    KERNEL_NAME_EXPRESSIONS,
    KERNEL_SOURCES,
    NVRTC_OPTIONS,
)

__all__ = ["NVRTC_OPTIONS", "KERNEL_SOURCES", "KERNEL_NAME_EXPRESSIONS", "HALF_UNIT_SUFFIX",
           "im2col_nhwc", "col2im_nhwc", "maxpool_forward_nhwc", "maxpool_backward_nhwc",
           "avgpool_forward_nhwc", "avgpool_backward_nhwc"]

_C_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}

_HALF = np.dtype(np.float16)

_BLOCK = 256
# Grid-stride loops make any grid correct; this only bounds the launch size.
_MAX_BLOCKS = 65536
_INT32_MAX = 2**31 - 1


@functools.cache
def _cupy() -> Any:
    """Import and return the ``cupy`` module (deferred until first use)."""
    import cupy

    return cupy


@functools.cache
def _module(unit: str) -> Any:
    """Return the ``cupy.RawModule`` of ``unit``, created once per process.

    CuPy compiles it on first use for the device current then (minicnn uses
    one GPU) and caches the binary on disk across processes.
    """
    return _cupy().RawModule(
        code=KERNEL_SOURCES[unit],
        options=NVRTC_OPTIONS,
        name_expressions=KERNEL_NAME_EXPRESSIONS[unit],
    )


@functools.cache
def _kernel(unit: str, name: str, dtype: np.dtype) -> Any:
    """Return the ``cupy.RawKernel`` ``name<T>`` of source ``unit`` for ``dtype`` (from the
    ``__half`` unit for float16)."""
    if dtype == _HALF:
        unit += HALF_UNIT_SUFFIX
    return _module(unit).get_function(f"{name}<{_C_TYPES[dtype]}>")


def _launch(kernel: Any, total: int, args: tuple) -> None:
    """Launch ``kernel`` with enough threads to cover ``total`` elements."""
    if total == 0:
        return
    blocks = min((total + _BLOCK - 1) // _BLOCK, _MAX_BLOCKS)
    kernel((blocks,), (_BLOCK,), args)


def _as_input(a: Any, name: str, ndim: int, kernel: str) -> Any:
    """Return ``a`` as a C-contiguous float16/float32/float64 CuPy array of ``ndim`` (the
    input ``name`` of ``kernel``, named in the errors)."""
    cp = _cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{kernel}: {name} must be a cupy.ndarray, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{kernel}: {name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype not in _C_TYPES:
        raise TypeError(f"{kernel}: {name} must be float16, float32 or float64, "
                        f"got {a.dtype}")
    return cp.ascontiguousarray(a)


def _output(out: Any, shape: tuple[int, ...], dtype: Any, name: str) -> Any:
    """Return ``out`` checked against ``shape``/``dtype``, or a new array."""
    cp = _cupy()
    dtype = np.dtype(dtype)
    if out is None:
        return cp.empty(shape, dtype=dtype)
    if not isinstance(out, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {shape} and dtype {dtype}, "
            f"got {out.shape} {out.dtype}"
        )
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return out


def _output_size(size: int, k: int, s: int, p: int, d: int, axis: str,
                 ceil_mode: bool = False) -> int:
    """Output length of a window sweep: (size + 2p - d(k-1) - 1)//s + 1, or with ``ceil_mode``
    (pooling) that division rounded up, less a last window starting at ``size + p`` or later
    (PyTorch's rule)."""
    if k < 1 or s < 1 or d < 1 or p < 0:
        raise ValueError(
            f"{axis}: need kernel, stride, dilation >= 1 and padding >= 0, "
            f"got k={k} s={s} d={d} p={p}"
        )
    if size + 2 * p + s > _INT32_MAX or d * (k - 1) > _INT32_MAX:
        raise ValueError(f"{axis}: padded size exceeds the int32 kernel limit")
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    if out < 1:
        raise ValueError(
            f"{axis}: window (k={k}, d={d}) larger than padded input "
            f"({size} + 2*{p})"
        )
    return out


def _ints(*values: int) -> tuple[np.int32, ...]:
    """Convert kernel size arguments to ``int32`` scalars, checking range."""
    for v in values:
        if not 0 <= v <= _INT32_MAX:
            raise ValueError(f"size argument {v} outside the int32 kernel range")
    return tuple(np.int32(v) for v in values)


def _check_pool_padding(kh: int, kw: int, ph: int, pw: int) -> None:
    """Require padding < kernel so every pooling window has a real cell."""
    if kh * kw > _INT32_MAX:
        raise ValueError(f"pooling window {kh}x{kw} exceeds the int32 limit")
    if ph >= kh or pw >= kw:
        raise ValueError(
            f"pooling padding must be smaller than the kernel, "
            f"got kernel ({kh}, {kw}) padding ({ph}, {pw})"
        )


def im2col_nhwc(
    x: Any,
    kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
    out: Any = None,
) -> Any:
    """Unfold convolution windows: x (N, H, W, C) -> cols (N, Ho, Wo, kh, kw, C).

    ``cols[n, oh, ow, i, j, c] = x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c]``,
    zero where that position is in the padding, with
    ``Ho = (H + 2*ph - dh*(kh-1) - 1)//sh + 1`` (``Wo`` likewise).
    ``out``, if given, must be a C-contiguous array of that shape and dtype.
    """
    x = _as_input(x, "x", 4, "im2col_nhwc")
    n, h, w, c = x.shape
    ho = _output_size(h, kh, sh, ph, dh, "height")
    wo = _output_size(w, kw, sw, pw, dw, "width")
    cols = _output(out, (n, ho, wo, kh, kw, c), x.dtype, "out")
    args = _ints(h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    _launch(
        _kernel("conv", "im2col_nhwc", x.dtype), cols.size,
        (x, cols, np.int64(cols.size), *args),
    )
    return cols


def col2im_nhwc(
    cols: Any, H: int, W: int,
    kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
    out: Any = None,
) -> Any:
    """Fold columns back: cols (N, Ho, Wo, kh, kw, C) -> x (N, H, W, C).

    The exact adjoint of :func:`im2col_nhwc`: ``x[n, h, w, c]`` is the sum of
    every column entry that im2col would copy from ``(n, h, w, c)``.
    Deterministic (gather form, fixed summation order, no atomics).
    """
    cols = _as_input(cols, "cols", 6, "col2im_nhwc")
    n, ho, wo, ckh, ckw, c = cols.shape
    exp_ho = _output_size(H, kh, sh, ph, dh, "height")
    exp_wo = _output_size(W, kw, sw, pw, dw, "width")
    if (ho, wo, ckh, ckw) != (exp_ho, exp_wo, kh, kw):
        raise ValueError(
            f"cols shape {cols.shape} does not match "
            f"(N, {exp_ho}, {exp_wo}, {kh}, {kw}, C) for a {H}x{W} input"
        )
    x = _output(out, (n, H, W, c), cols.dtype, "out")
    args = _ints(H, W, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    _launch(
        _kernel("conv", "col2im_nhwc", cols.dtype), x.size,
        (cols, x, np.int64(x.size), *args),
    )
    return x


def maxpool_forward_nhwc(
    x: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
    *, dh: int = 1, dw: int = 1, ceil_mode: bool = False,
    out: Any = None, argmax: Any = None,
) -> tuple[Any, Any]:
    """Max pooling: x (N, H, W, C) -> (y, argmax), both (N, Ho, Wo, C).

    Window (oh, ow) reads ``x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c]``.
    Padding cells never win (they act as -inf); ``ph < kh`` and ``pw < kw``
    are required. ``argmax`` (int32) holds ``i*kw + j``, the window offset
    of the first maximal cell in row-major order (ties go to the first).
    ``Ho = (H + 2*ph - dh*(kh-1) - 1)//sh + 1``, rounded up with
    ``ceil_mode`` as PyTorch does (see :func:`_output_size`).
    """
    x = _as_input(x, "x", 4, "maxpool_forward_nhwc")
    _check_pool_padding(kh, kw, ph, pw)
    n, h, w, c = x.shape
    ho = _output_size(h, kh, sh, ph, dh, "height", ceil_mode)
    wo = _output_size(w, kw, sw, pw, dw, "width", ceil_mode)
    y = _output(out, (n, ho, wo, c), x.dtype, "out")
    arg = _output(argmax, (n, ho, wo, c), np.int32, "argmax")
    args = _ints(h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    _launch(
        _kernel("pool", "maxpool_forward_nhwc", x.dtype), y.size,
        (x, y, arg, np.int64(y.size), *args),
    )
    return y, arg


def maxpool_backward_nhwc(
    dy: Any, argmax: Any, H: int, W: int,
    kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
    *, dh: int = 1, dw: int = 1, ceil_mode: bool = False,
    out: Any = None,
) -> Any:
    """Max-pool gradient: dy, argmax (N, Ho, Wo, C) -> dx (N, H, W, C).

    ``dx[n, h, w, c]`` sums ``dy`` over the windows whose ``argmax`` (from
    :func:`maxpool_forward_nhwc` with the same geometry) points at
    ``(h, w)``, in the fixed window order (tap ``i`` then ``j``). Overlapping
    windows are handled; deterministic (gather form, no atomics).
    """
    dy = _as_input(dy, "dy", 4, "maxpool_backward_nhwc")
    _check_pool_padding(kh, kw, ph, pw)
    n, ho, wo, c = dy.shape
    exp = (_output_size(H, kh, sh, ph, dh, "height", ceil_mode),
           _output_size(W, kw, sw, pw, dw, "width", ceil_mode))
    if (ho, wo) != exp:
        raise ValueError(f"dy shape {dy.shape} does not match Ho, Wo = {exp}")
    if not isinstance(argmax, _cupy().ndarray):
        raise TypeError(
            f"argmax must be a cupy.ndarray, got {type(argmax).__name__}"
        )
    if argmax.shape != dy.shape or argmax.dtype != np.int32:
        raise ValueError(
            f"argmax must be int32 of shape {dy.shape}, "
            f"got {argmax.dtype} {argmax.shape}"
        )
    argmax = _cupy().ascontiguousarray(argmax)
    dx = _output(out, (n, H, W, c), dy.dtype, "out")
    args = _ints(H, W, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    _launch(
        _kernel("pool", "maxpool_backward_nhwc", dy.dtype), dx.size,
        (dy, argmax, dx, np.int64(dx.size), *args),
    )
    return dx


def avgpool_forward_nhwc(
    x: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
    *, ceil_mode: bool = False, count_include_pad: bool = True,
    out: Any = None,
) -> Any:
    """Average pooling: x (N, H, W, C) -> y (N, Ho, Wo, C).

    ``y`` is the window sum (padding counts as zeros) divided by PyTorch's
    divisor: the window's cells inside the input and its padding
    (``count_include_pad``, ``kh*kw`` unless a ceil_mode window hangs past
    the right padding) or inside the input alone.
    ``Ho = (H + 2*ph - kh)//sh + 1``, rounded up with ``ceil_mode``.
    """
    x = _as_input(x, "x", 4, "avgpool_forward_nhwc")
    _check_pool_padding(kh, kw, ph, pw)
    n, h, w, c = x.shape
    ho = _output_size(h, kh, sh, ph, 1, "height", ceil_mode)
    wo = _output_size(w, kw, sw, pw, 1, "width", ceil_mode)
    y = _output(out, (n, ho, wo, c), x.dtype, "out")
    args = _ints(h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, int(bool(count_include_pad)))
    _launch(
        _kernel("pool", "avgpool_forward_nhwc", x.dtype), y.size,
        (x, y, np.int64(y.size), *args),
    )
    return y


def avgpool_backward_nhwc(
    dy: Any, H: int, W: int,
    kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
    *, ceil_mode: bool = False, count_include_pad: bool = True,
    out: Any = None,
) -> Any:
    """Average-pool gradient: dy (N, Ho, Wo, C) -> dx (N, H, W, C).

    ``dx[n, h, w, c]`` is the sum, over the windows containing ``(h, w)``,
    of ``dy`` divided by that window's divisor (as in
    :func:`avgpool_forward_nhwc`). Deterministic (gather form, fixed
    summation order, no atomics).
    """
    dy = _as_input(dy, "dy", 4, "avgpool_backward_nhwc")
    _check_pool_padding(kh, kw, ph, pw)
    n, ho, wo, c = dy.shape
    exp = (_output_size(H, kh, sh, ph, 1, "height", ceil_mode),
           _output_size(W, kw, sw, pw, 1, "width", ceil_mode))
    if (ho, wo) != exp:
        raise ValueError(f"dy shape {dy.shape} does not match Ho, Wo = {exp}")
    dx = _output(out, (n, H, W, c), dy.dtype, "out")
    args = _ints(H, W, c, ho, wo, kh, kw, sh, sw, ph, pw, int(bool(count_include_pad)))
    _launch(
        _kernel("pool", "avgpool_backward_nhwc", dy.dtype), dx.size,
        (dy, dx, np.int64(dx.size), *args),
    )
    return dx
