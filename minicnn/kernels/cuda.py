"""CUDA kernels for the channels-last (NHWC) convolution and pooling paths.

The kernels are CUDA C++ source strings compiled at run time by CuPy (NVRTC)
and launched through thin Python wrappers. Every kernel is a template over
the element type ``T``; the wrappers pick the instantiation from the input's
dtype through NVRTC name expressions such as ``"im2col_nhwc<float>"``:
``float`` (float32, the default dtype), ``double`` (float64, used by gradient
checks) and ``__half`` (float16, mixed precision's compute dtype), and refuse
any other dtype. The ``__half`` instantiations are separate compilation units
(``"conv_half"``, ``"pool_half"``: the same source after ``#include
<cuda_fp16.h>``), so float32 and float64 compile without the CUDA headers.
Sums of ``__half`` elements (col2im, average pooling and its gradient,
max-pool gradient) accumulate in ``float`` and round to half once, when
written; max pooling compares in ``float`` (exact for halves).

Conventions shared by all kernels:

* one thread per *output* element, in a grid-stride loop over a 64-bit flat
  index, so any element count that fits in ``int64`` works with a bounded
  grid;
* per-axis sizes (N, H, W, C, kernel, stride, padding, dilation) are passed
  as ``int`` and the wrappers check they fit; offsets into arrays are always
  computed in ``long long``;
* backward kernels are written in *gather* form: one thread per input-gradient
  element loops over the windows covering it in a fixed order (tap ``i``,
  then ``j``, ascending), sums in a register and writes once. No kernel uses
  atomics, so results are bit-identical from run to run (a run resumed from a
  checkpoint ends as an uninterrupted one); tests/test_cuda_determinism.py
  checks the rule and emulates the gathers without a GPU.

The im2col "columns" layout is a C-contiguous ``(N, Ho, Wo, kh, kw, C)``
array, i.e. the matrix ``(N*Ho*Wo, kh*kw*C)`` whose rows are output
positions and whose columns are kernel offsets with the channel fastest.

``cupy`` is imported lazily, so this module imports on machines without it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Options passed to NVRTC for every compilation unit (CuPy adds the target
# architecture itself; the NVRTC compile test adds ``--gpu-architecture``).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)

_PRELUDE = r"""
// Grid-stride loop over a 64-bit flat index range [0, total).
#define MINICNN_FOR_EACH(idx, total)                                        \
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;    \
       idx < (total); idx += (long long)blockDim.x * gridDim.x)

// Acc<T>::type is the type kernels sum and compare in: T itself for float
// and double; the half units specialize it to float for __half.
template <typename T> struct Acc { typedef T type; };
"""

# Prepended to a unit's source to make its __half instantiations: sums of
# __half elements run in float and are rounded to half once, when written.
_HALF_PRELUDE = r"""
#include <cuda_fp16.h>
template <typename T> struct Acc;
template <> struct Acc<__half> { typedef float type; };
"""

_CONV_SOURCE = _PRELUDE + r"""
// cols[n, oh, ow, i, j, c] = x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c],
// or 0 where that position falls in the zero padding.
// x: (N, H, W, C); cols: (N, Ho, Wo, kh, kw, C); total = cols.size.
template <typename T>
__global__ void im2col_nhwc(const T* __restrict__ x, T* __restrict__ cols,
                            long long total, int H, int W, int C,
                            int Ho, int Wo, int kh, int kw, int sh, int sw,
                            int ph, int pw, int dh, int dw) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C);  t /= C;
    const int j = (int)(t % kw); t /= kw;
    const int i = (int)(t % kh); t /= kh;
    const int ow = (int)(t % Wo); t /= Wo;
    const int oh = (int)(t % Ho);
    const long long n = t / Ho;
    const int h = oh * sh - ph + i * dh;
    const int w = ow * sw - pw + j * dw;
    T value = static_cast<T>(0.0f);
    if (h >= 0 && h < H && w >= 0 && w < W) {
      value = x[((n * H + h) * W + w) * C + c];
    }
    cols[idx] = value;
  }
}

// Adjoint of im2col_nhwc: x[n, h, w, c] = sum of every column entry that
// im2col_nhwc copied from (n, h, w, c).
// cols: (N, Ho, Wo, kh, kw, C); x: (N, H, W, C); total = x.size.
template <typename T>
__global__ void col2im_nhwc(const T* __restrict__ cols, T* __restrict__ x,
                            long long total, int H, int W, int C,
                            int Ho, int Wo, int kh, int kw, int sh, int sw,
                            int ph, int pw, int dh, int dw) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C); t /= C;
    const int w = (int)(t % W); t /= W;
    const int h = (int)(t % H);
    const long long n = t / H;
    typedef typename Acc<T>::type A;
    A acc = 0;
    for (int i = 0; i < kh; ++i) {
      // (h, w) is kernel offset (i, j) of output (oh, ow) exactly when
      // oh*sh == h + ph - i*dh (and likewise for w), with oh in [0, Ho).
      const int th = h + ph - i * dh;
      if (th < 0) break;  // th only decreases as i grows
      if (th % sh != 0) continue;
      const int oh = th / sh;
      if (oh >= Ho) continue;
      for (int j = 0; j < kw; ++j) {
        const int tw = w + pw - j * dw;
        if (tw < 0) break;
        if (tw % sw != 0) continue;
        const int ow = tw / sw;
        if (ow >= Wo) continue;
        acc += static_cast<A>(cols[((((n * Ho + oh) * Wo + ow) * kh + i) * kw + j) * C + c]);
      }
    }
    x[idx] = static_cast<T>(acc);
  }
}
"""

_POOL_SOURCE = _PRELUDE + r"""
// PyTorch's avg_pool2d divisor of the window starting at (h0, w0): its cells
// inside the input and its padding (count_include_pad), or inside the input
// alone. ceil_mode's last window may hang past the right padding; those cells
// are never counted.
__device__ __forceinline__ int avgpool_divisor(int h0, int w0, int H, int W,
                                               int kh, int kw, int ph, int pw,
                                               int count_include_pad) {
  const int h1 = min(h0 + kh, H + ph);
  const int w1 = min(w0 + kw, W + pw);
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0));
}

// y[n, oh, ow, c] = max of x over the window's real (non-padding) cells
// x[n, oh*sh - ph + i*dh, ow*sw - pw + j*dw, c]; argmax = i*kw + j of the
// first maximal cell in row-major window order (-1, and y = -inf, for a
// window of padding alone, as PyTorch gives -inf there).
// x: (N, H, W, C); y, argmax: (N, Ho, Wo, C); total = y.size.
template <typename T>
__global__ void maxpool_forward_nhwc(const T* __restrict__ x,
                                     T* __restrict__ y,
                                     int* __restrict__ argmax,
                                     long long total, int H, int W, int C,
                                     int Ho, int Wo, int kh, int kw,
                                     int sh, int sw, int ph, int pw,
                                     int dh, int dw) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C); t /= C;
    const int ow = (int)(t % Wo); t /= Wo;
    const int oh = (int)(t % Ho);
    const long long n = t / Ho;
    const int h0 = oh * sh - ph;
    const int w0 = ow * sw - pw;
    typedef typename Acc<T>::type A;
    // -inf (double bits 0xfff0...), for a window holding padding alone
    A best = static_cast<A>(__longlong_as_double((long long)0xfff0000000000000ULL));
    int best_k = -1;
    for (int i = 0; i < kh; ++i) {
      const int h = h0 + i * dh;
      if (h < 0 || h >= H) continue;
      for (int j = 0; j < kw; ++j) {
        const int w = w0 + j * dw;
        if (w < 0 || w >= W) continue;
        const A v = static_cast<A>(x[((n * H + h) * W + w) * C + c]);
        // Strict '>' keeps the first maximum. The NaN clause makes the
        // first NaN win and stick, as np.max / np.argmax do.
        if (best_k < 0 || v > best || (v != v && best == best)) {
          best = v;
          best_k = i * kw + j;
        }
      }
    }
    y[idx] = static_cast<T>(best);  // exact: best is one of the x values
    argmax[idx] = best_k;
  }
}

// dx[n, h, w, c] = sum of dy[n, oh, ow, c] over the windows (oh, ow) whose
// argmax points at (h, w).
// dy, argmax: (N, Ho, Wo, C); dx: (N, H, W, C); total = dx.size.
template <typename T>
__global__ void maxpool_backward_nhwc(const T* __restrict__ dy,
                                      const int* __restrict__ argmax,
                                      T* __restrict__ dx,
                                      long long total, int H, int W, int C,
                                      int Ho, int Wo, int kh, int kw,
                                      int sh, int sw, int ph, int pw,
                                      int dh, int dw) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C); t /= C;
    const int w = (int)(t % W); t /= W;
    const int h = (int)(t % H);
    const long long n = t / H;
    typedef typename Acc<T>::type A;
    A acc = 0;
    for (int i = 0; i < kh; ++i) {
      // (h, w) is tap (i, j) of window (oh, ow) exactly when
      // oh*sh == h + ph - i*dh (and likewise for w), with oh in [0, Ho).
      const int th = h + ph - i * dh;
      if (th < 0) break;  // th only decreases as i grows
      if (th % sh != 0) continue;
      const int oh = th / sh;
      if (oh >= Ho) continue;
      for (int j = 0; j < kw; ++j) {
        const int tw = w + pw - j * dw;
        if (tw < 0) break;
        if (tw % sw != 0) continue;
        const int ow = tw / sw;
        if (ow >= Wo) continue;
        const long long o = ((n * Ho + oh) * Wo + ow) * C + c;
        if (argmax[o] == i * kw + j) acc += static_cast<A>(dy[o]);
      }
    }
    dx[idx] = static_cast<T>(acc);
  }
}

// y[n, oh, ow, c] = (sum of x over the window's real cells) / its divisor
// (avgpool_divisor): padding counts as zeros.
// x: (N, H, W, C); y: (N, Ho, Wo, C); total = y.size.
template <typename T>
__global__ void avgpool_forward_nhwc(const T* __restrict__ x,
                                     T* __restrict__ y,
                                     long long total, int H, int W, int C,
                                     int Ho, int Wo, int kh, int kw,
                                     int sh, int sw, int ph, int pw,
                                     int count_include_pad) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C); t /= C;
    const int ow = (int)(t % Wo); t /= Wo;
    const int oh = (int)(t % Ho);
    const long long n = t / Ho;
    const int h0 = oh * sh - ph;
    const int w0 = ow * sw - pw;
    typedef typename Acc<T>::type A;
    A acc = 0;
    for (int i = 0; i < kh; ++i) {
      const int h = h0 + i;
      if (h < 0 || h >= H) continue;
      for (int j = 0; j < kw; ++j) {
        const int w = w0 + j;
        if (w < 0 || w >= W) continue;
        acc += static_cast<A>(x[((n * H + h) * W + w) * C + c]);
      }
    }
    y[idx] = static_cast<T>(acc / A(avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw,
                                                    count_include_pad)));
  }
}

// dx[n, h, w, c] = sum over the windows containing (h, w) of dy / that
// window's divisor (avgpool_divisor).
// dy: (N, Ho, Wo, C); dx: (N, H, W, C); total = dx.size.
template <typename T>
__global__ void avgpool_backward_nhwc(const T* __restrict__ dy,
                                      T* __restrict__ dx,
                                      long long total, int H, int W, int C,
                                      int Ho, int Wo, int kh, int kw,
                                      int sh, int sw, int ph, int pw,
                                      int count_include_pad) {
  MINICNN_FOR_EACH(idx, total) {
    long long t = idx;
    const int c = (int)(t % C); t /= C;
    const int w = (int)(t % W); t /= W;
    const int h = (int)(t % H);
    const long long n = t / H;
    typedef typename Acc<T>::type A;
    A acc = 0;
    for (int i = 0; i < kh; ++i) {
      const int th = h + ph - i;
      if (th < 0) break;
      if (th % sh != 0) continue;
      const int oh = th / sh;
      if (oh >= Ho) continue;
      for (int j = 0; j < kw; ++j) {
        const int tw = w + pw - j;
        if (tw < 0) break;
        if (tw % sw != 0) continue;
        const int ow = tw / sw;
        if (ow >= Wo) continue;
        const int d = avgpool_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw,
                                      ph, pw, count_include_pad);
        acc += static_cast<A>(dy[((n * Ho + oh) * Wo + ow) * C + c]) / A(d);
      }
    }
    dx[idx] = static_cast<T>(acc);
  }
}
"""

_C_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float16): "__half",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}

_HALF = np.dtype(np.float16)
HALF_UNIT_SUFFIX = "_half"
"""A unit's ``__half`` instantiations are the unit of this name suffix (``"conv_half"``)."""

# Template kernels of each source (instantiated for every C type).
_KERNELS: dict[str, tuple[str, ...]] = {
    "conv": ("im2col_nhwc", "col2im_nhwc"),
    "pool": (
        "maxpool_forward_nhwc",
        "maxpool_backward_nhwc",
        "avgpool_forward_nhwc",
        "avgpool_backward_nhwc",
    ),
}
_SOURCES: dict[str, str] = {"conv": _CONV_SOURCE, "pool": _POOL_SOURCE}

# float and double compile without any header; __half needs <cuda_fp16.h> from the CUDA
# include directory (the one CuPy's own float16 kernels use, which cupy.RawModule adds to the
# options), so it is a separate unit and float32 does not depend on finding that header.
KERNEL_SOURCES: dict[str, str] = {
    **_SOURCES,
    **{unit + HALF_UNIT_SUFFIX: _HALF_PRELUDE + src for unit, src in _SOURCES.items()},
}
"""Compilation unit name -> full CUDA C++ source minicnn compiles."""

KERNEL_NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    **{unit: tuple(f"{k}<{t}>" for k in kernels for t in ("float", "double"))
       for unit, kernels in _KERNELS.items()},
    **{unit + HALF_UNIT_SUFFIX: tuple(f"{k}<__half>" for k in kernels)
       for unit, kernels in _KERNELS.items()},
}
"""Compilation unit name -> NVRTC name expressions of its kernel entries."""

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
