"""The CUDA C++ sources of minicnn's kernels, as data: compiled at run time by CuPy (NVRTC)
from ``minicnn.kernels.cuda``, and by the NVRTC compile test without a GPU. They serve the
channels-last (NHWC) convolution and pooling paths.

The wrappers in ``minicnn.kernels.cuda`` launch them. Every kernel is a template over
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
"""
from __future__ import annotations

__all__ = ["NVRTC_OPTIONS", "KERNEL_SOURCES", "KERNEL_NAME_EXPRESSIONS", "HALF_UNIT_SUFFIX",
           "KERNELS"]

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

HALF_UNIT_SUFFIX = "_half"
"""A unit's ``__half`` instantiations are the unit of this name suffix (``"conv_half"``)."""

# Template kernels of each source (instantiated for every C type).
KERNELS: dict[str, tuple[str, ...]] = {
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
       for unit, kernels in KERNELS.items()},
    **{unit + HALF_UNIT_SUFFIX: tuple(f"{k}<__half>" for k in kernels)
       for unit, kernels in KERNELS.items()},
}
"""Compilation unit name -> NVRTC name expressions of its kernel entries."""
