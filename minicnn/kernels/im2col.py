"""im2col and col2im: turn every convolution window into one row of a matrix, and back.

Column layout
-------------
Images are logically NCHW, but im2col reads them channels-last (NHWC), because there a window's
row of ``kw`` pixels times ``C`` channels is contiguous memory. For input (N, C, H, W), kernel
(kh, kw), stride (sh, sw), padding (ph, pw) and dilation (dh, dw), ``im2col`` returns a
C-contiguous array of shape (N, Ho, Wo, kh, kw, C), viewed as a matrix
(N*Ho*Wo, kh*kw*C) by ``cols.reshape(N*Ho*Wo, -1)``:

* one row per output position, in (n, oh, ow) order;
* one column per kernel tap and channel, in (i, j, c) order, c fastest;
* entry (n, oh, ow, i, j, c) = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], or 0 in the padding;
* Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1, and the same for Wo.

A convolution is then one matrix multiply: ``cols @ W.transpose(2, 3, 1, 0).reshape(-1, O)``.
``col2im`` is the exact adjoint of ``im2col``: every column entry is added back onto the pixel
it was copied from, so pixels covered by several windows receive the sum. A convolution's input
gradient is ``col2im(dy @ W'.T)``; ``col2im_matmul`` computes it without the (N*Ho*Wo, kh*kw*C)
product: one small matrix multiply per kernel tap, added straight into the image.

On NumPy, im2col is one copy out of a strided 6-D view of the padded image (or, for one
channel, one strided slice per kernel tap), and col2im adds one strided slice per tap: no
Python loop over the batch or output positions. The CuPy path runs the CUDA kernels in
``minicnn.kernels.cuda``.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend

IntPair = int | tuple[int, int]


def pair(value: IntPair, what: str = "value") -> tuple[int, int]:
    """Return ``value`` as an (int, int) pair; an int v becomes (v, v)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (isinstance(value, tuple | list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{what} must be an int or a pair of ints, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Number of window positions along one axis: (size + 2p - d(k-1) - 1) // s + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _tap_range(i: int, out_size: int, in_size: int, s: int, p: int, d: int) -> tuple[int, int, int]:
    """For kernel tap i, the output positions [lo, hi) whose input pixel lies inside the image,
    and the input index of the first one."""
    offset = i * d - p                      # input index = o*s + offset
    lo = max(0, (-offset + s - 1) // s)
    hi = max(lo, min(out_size, (in_size - 1 - offset) // s + 1))
    return lo, hi, lo * s + offset


def _geometry(x_shape, kernel_size, stride, padding, dilation):
    n, c, h, w = x_shape
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dh, dw = pair(dilation, "dilation")
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"im2col: input {h}x{w} with padding ({ph}, {pw}) is smaller than the "
                         f"dilated kernel {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}")
    return n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo


def im2col(x: Any, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1, out: Any = None) -> Any:
    """Gather the windows of x (N, C, H, W) into columns of shape (N, Ho, Wo, kh, kw, C).

    ``x`` may have any strides; it is cheapest when its memory is channels-last. ``out``, when
    given, is an array (or a view, such as some columns of a wider matrix) of the result's shape
    and dtype that is filled and returned.
    """
    xp = backend.get_array_module(x)
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _geometry(
        x.shape, kernel_size, stride, padding, dilation)
    x_nhwc = x.transpose(0, 2, 3, 1)
    shape = (n, ho, wo, kh, kw, c)
    if out is None or out.shape != shape or out.dtype != x.dtype:
        out = xp.empty(shape, dtype=x.dtype)
    if backend.is_cupy_array(x):
        from minicnn.kernels import cuda as cuda_kernels
        x_nhwc = xp.ascontiguousarray(x_nhwc)
        if out.flags.c_contiguous:
            return cuda_kernels.im2col_nhwc(x_nhwc, kh, kw, sh, sw, ph, pw, dh, dw, out=out)
        out[...] = cuda_kernels.im2col_nhwc(x_nhwc, kh, kw, sh, sw, ph, pw, dh, dw)
        return out
    _im2col_numpy(x_nhwc, out, kh, kw, sh, sw, ph, pw, dh, dw)
    return out


def _im2col_numpy(x_nhwc, out, kh, kw, sh, sw, ph, pw, dh, dw) -> None:
    """Fill ``out`` (N, Ho, Wo, kh, kw, C) with the windows of ``x_nhwc`` (N, H, W, C)."""
    xp = backend.get_array_module(x_nhwc)
    n, h, w, c = x_nhwc.shape
    ho, wo = out.shape[1:3]
    if c > 1:
        # Several channels: one copy from a strided 6-D view of the zero-padded image.
        padded = x_nhwc
        if ph or pw:
            padded = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x_nhwc.dtype)
            padded[:, ph:ph + h, pw:pw + w] = x_nhwc
        s_n, s_h, s_w, s_c = padded.strides
        out[...] = xp.lib.stride_tricks.as_strided(
            padded, out.shape, (s_n, s_h * sh, s_w * sw, s_h * dh, s_w * dw, s_c))
        return
    # One channel: copy one strided slice of the whole batch per kernel tap.
    for i in range(kh):
        r0, r1, h0 = _tap_range(i, ho, h, sh, ph, dh)
        for j in range(kw):
            c0, c1, w0 = _tap_range(j, wo, w, sw, pw, dw)
            tap = out[:, :, :, i, j, :]
            if r1 > r0 and c1 > c0:
                tap[:, r0:r1, c0:c1] = x_nhwc[:, h0:h0 + (r1 - r0 - 1) * sh + 1:sh,
                                              w0:w0 + (c1 - c0 - 1) * sw + 1:sw]
            # windows that hang over the border read zeros
            tap[:, :r0] = 0
            tap[:, r1:] = 0
            tap[:, r0:r1, :c0] = 0
            tap[:, r0:r1, c1:] = 0


def col2im(cols: Any, x_shape: tuple[int, int, int, int], kernel_size: IntPair,
           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Any:
    """Adjoint of ``im2col``: sum columns (N, Ho, Wo, kh, kw, C) back into an image.

    Returns an array of logical shape ``x_shape`` = (N, C, H, W) whose memory is channels-last.
    """
    xp = backend.get_array_module(cols)
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _geometry(
        x_shape, kernel_size, stride, padding, dilation)
    if cols.shape != (n, ho, wo, kh, kw, c):
        raise ValueError(f"col2im: expected columns of shape {(n, ho, wo, kh, kw, c)}, "
                         f"got {tuple(cols.shape)}")
    if backend.is_cupy_array(cols):
        from minicnn.kernels import cuda as cuda_kernels
        out = cuda_kernels.col2im_nhwc(xp.ascontiguousarray(cols), h, w,
                                       kh, kw, sh, sw, ph, pw, dh, dw)
        return out.transpose(0, 3, 1, 2)
    out = xp.zeros((n, h, w, c), dtype=cols.dtype)
    for i in range(kh):
        r0, r1, h0 = _tap_range(i, ho, h, sh, ph, dh)
        for j in range(kw):
            c0, c1, w0 = _tap_range(j, wo, w, sw, pw, dw)
            if r1 > r0 and c1 > c0:
                out[:, h0:h0 + (r1 - r0 - 1) * sh + 1:sh, w0:w0 + (c1 - c0 - 1) * sw + 1:sw] \
                    += cols[:, r0:r1, c0:c1, i, j, :]
    return out.transpose(0, 3, 1, 2)


def col2im_matmul(dy: Any, w: Any, x_shape: tuple[int, int, int, int], kernel_size: IntPair,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1) -> Any:
    """``col2im((dy @ w.T).reshape(N, Ho, Wo, kh, kw, C), x_shape, ...)``, for dy (N*Ho*Wo, O)
    and w (kh*kw*C, O) with rows in im2col's (i, j, c) order (Conv2D's weight matrix).

    On NumPy the product is formed one kernel tap (i, j) at a time, ``dy @ w[rows of (i, j)].T``
    of shape (N*Ho*Wo, C), and added onto the pixels that tap reads: nine products small enough
    to stay in cache instead of one 9x larger matrix written out and read back. Returns logical
    shape ``x_shape`` = (N, C, H, W) with channels-last memory.
    """
    xp = backend.get_array_module(dy)
    n, c, h, w_in, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo = _geometry(
        x_shape, kernel_size, stride, padding, dilation)
    if dy.shape != (n * ho * wo, w.shape[1]) or w.shape[0] != kh * kw * c:
        raise ValueError(f"col2im_matmul: expected dy ({n * ho * wo}, O) and w ({kh * kw * c}, O), "
                         f"got {tuple(dy.shape)} and {tuple(w.shape)}")
    if backend.is_cupy_array(dy):
        cols = (dy @ w.T).reshape(n, ho, wo, kh, kw, c)
        return col2im(cols, x_shape, kernel_size, stride, padding, dilation)
    taps = [(i * kw + j, *_tap_range(i, ho, h, sh, ph, dh), *_tap_range(j, wo, w_in, sw, pw, dw))
            for i in range(kh) for j in range(kw)]                 # (k, r0, r1, h0, c0, c1, w0)
    # A tap that reads every pixel once, at its own position (the centre of a 'same' stride-1
    # convolution), starts the sum: its product is written straight into the image.
    whole = next((t for t in taps if (ho, wo, sh, sw) == (h, w_in, 1, 1)
                  and t[1:] == (0, h, 0, 0, w_in, 0)), None)

    def tap_matrix(k: int) -> Any:                               # (O, C) rows of tap k
        return w[k * c:(k + 1) * c].T

    if whole is not None:
        out = xp.matmul(dy, tap_matrix(whole[0])).reshape(n, h, w_in, c)
    else:
        out = xp.zeros((n, h, w_in, c), dtype=dy.dtype)
    part = None
    for tap in taps:
        k, r0, r1, h0, c0, c1, w0 = tap
        if tap is whole or r1 <= r0 or c1 <= c0:
            continue
        part = xp.matmul(dy, tap_matrix(k), out=part)
        out[:, h0:h0 + (r1 - r0 - 1) * sh + 1:sh, w0:w0 + (c1 - c0 - 1) * sw + 1:sw] += \
            part.reshape(n, ho, wo, c)[:, r0:r1, c0:c1]
    return out.transpose(0, 3, 1, 2)
