"""Max and average pooling over windows of NCHW images, and global average pooling.

Semantics are PyTorch's (``torch.nn.MaxPool2d``, ``AvgPool2d``). Along each axis the window
starts at ``o*s - p`` and reads ``k`` cells ``d`` apart (dilation, max pooling only); there are
``(H + 2p - d(k-1) - 1) // s + 1`` windows, or with ``ceil_mode`` that division rounded up,
except that a last window starting past the input and its left padding (at ``H + p`` or later)
is dropped. ceil_mode's extra windows may hang past the right padding: the cells out there are
ignored (never a maximum, not counted in an average). Padding is at most half the kernel.

Max pooling stores, per output, the index ``i*kw + j`` of the first maximal tap (ties go to the
first in row-major order), and its backward routes each gradient to that tap alone. Padding
cells never win a max. An average divides the window's sum by the number of its cells inside
the input and the padding (``count_include_pad=True``: padding counts as zeros) or inside the
input alone (``count_include_pad=False``).

The NumPy path loops over the kh*kw window taps, each one a strided slice of the whole batch,
on the channels-last view of the input; the CuPy path calls the gather kernels of
``minicnn.kernels.cuda``.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels.im2col import IntPair, pair
from minicnn.layers.base import Layer, grad_enabled


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Number of pooling windows along one axis, by PyTorch's rule: floor (or ceil with
    ``ceil_mode``) of ``(size + 2p - d(k-1) - 1) / s``, plus one; with ``ceil_mode`` a last window
    that would start at ``size + p`` or later (in the right padding) is dropped."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _taps(kh: int, kw: int, ho: int, wo: int, sh: int, sw: int, dh: int = 1, dw: int = 1):
    """(k, (row slice, column slice)) for each window tap k = i*kw + j: the slices of the padded
    input that tap (i, j) of every window reads."""
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                               slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))


def _window_counts(size: int, k: int, s: int, p: int, out: int, include_pad: bool) -> list[int]:
    """Per window along one axis, how many of its k cells lie inside the input and its padding
    (``include_pad``) or inside the input alone; PyTorch's avg_pool2d divisor, one axis."""
    counts = []
    for start in range(-p, out * s - p, s):
        end = min(start + k, size + p)
        counts.append(end - start if include_pad else min(end, size) - max(start, 0))
    return counts


class _Pool2D(Layer):
    """Shared geometry and checks for MaxPool2D and AvgPool2D."""

    per_sample = True

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
                 dilation: IntPair = 1, ceil_mode: bool = False):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding")
        self.dilation = pair(dilation, f"{name} dilation")
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"{name}: ceil_mode must be True or False, got {ceil_mode!r}")
        self.ceil_mode = ceil_mode
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size, stride and dilation must be >= 1, "
                             f"padding >= 0, got kernel_size {self.kernel_size}, stride "
                             f"{self.stride}, dilation {self.dilation}, padding {self.padding}")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")
        self._input_hw: tuple[int, int] | None = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        c, h, w = input_shape
        ho, wo = (pool_output_size(s, k, st, p, d, self.ceil_mode) for s, k, st, p, d in
                  zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label()}: input {h}x{w} (padding {self.padding}) is smaller "
                             f"than the window {self.kernel_size} (dilation {self.dilation})")
        self._input_hw = (int(h), int(w))    # what ONNX export reads (the model's shapes)
        return (c, ho, wo)

    def _padded_size(self, h: int, w: int, ho: int, wo: int) -> tuple[int, int]:
        """Height and width of the padded input: the padding on both sides, and on the right
        as far as ceil_mode's last window reaches."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        return (max(h + 2 * ph, (ho - 1) * sh + dh * (kh - 1) + 1),
                max(w + 2 * pw, (wo - 1) * sw + dw * (kw - 1) + 1))

    def _padded(self, x_nhwc: Any, fill: float, ho: int, wo: int) -> Any:
        """The channels-last input, padded with ``fill`` where the windows reach past it."""
        n, h, w, c = x_nhwc.shape
        ph, pw = self.padding
        hp, wp = self._padded_size(h, w, ho, wo)
        if (hp, wp) == (h, w):
            return x_nhwc
        xp = backend.get_array_module(x_nhwc)
        out = xp.full((n, hp, wp, c), fill, dtype=x_nhwc.dtype)
        out[:, ph:ph + h, pw:pw + w] = x_nhwc
        return out

    def _crop(self, padded: Any, h: int, w: int) -> Any:
        ph, pw = self.padding
        return padded[:, ph:ph + h, pw:pw + w]


class MaxPool2D(_Pool2D):
    """Max over each window: (N, C, H, W) -> (N, C, Ho, Wo). stride defaults to kernel_size;
    ``dilation`` spaces the window's cells, ``ceil_mode`` rounds the window count up."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
                 dilation: IntPair = 1, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        xp = backend.get_array_module(x)
        x_nhwc = x.transpose(0, 2, 3, 1)
        if backend.is_cupy_array(x):
            from minicnn.kernels import cuda as cuda_kernels
            y, argmax = cuda_kernels.maxpool_forward_nhwc(
                xp.ascontiguousarray(x_nhwc), kh, kw, sh, sw, *self.padding, dh=dh, dw=dw,
                ceil_mode=self.ceil_mode)
        else:
            xpad = self._padded(x_nhwc, float("-inf"), ho, wo)
            y = argmax = None
            for k, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw, dh, dw):
                tap = xpad[:, rows, cols]
                if y is None:
                    y = tap.copy()
                    argmax = xp.zeros(y.shape, dtype=xp.uint8 if kh * kw < 256 else xp.int32)
                    continue
                if not grad_enabled():               # inference: no argmax needed
                    xp.maximum(y, tap, out=y)
                    continue
                better = tap > y                     # strict: ties keep the earlier tap
                xp.maximum(y, tap, out=y)
                # taps come in increasing k, so "argmax = k where better" is a running maximum
                # (a bool array is read as uint8 0/1 without a copy)
                flags = better.view(xp.uint8) if argmax.dtype == xp.uint8 else \
                    better.astype(argmax.dtype)
                xp.maximum(argmax, flags * argmax.dtype.type(k), out=argmax)
        self.save_for_backward(tuple(x.shape), argmax)
        return y.transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), argmax = self.pop_saved()
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        xp = backend.get_array_module(grad_out)
        dy = grad_out.transpose(0, 2, 3, 1)
        if backend.is_cupy_array(dy):
            from minicnn.kernels import cuda as cuda_kernels
            dx = cuda_kernels.maxpool_backward_nhwc(
                xp.ascontiguousarray(dy), argmax, h, w, kh, kw, sh, sw, ph, pw, dh=dh, dw=dw,
                ceil_mode=self.ceil_mode)
            return dx.transpose(0, 3, 1, 2)
        ho, wo = dy.shape[1:3]
        hp, wp = self._padded_size(h, w, ho, wo)
        # windows that tile the input exactly write every cell below: no need to zero it first
        tiled = (kh, kw, ph, pw, dh, dw) == (sh, sw, 0, 0, 1, 1) and (ho * kh, wo * kw) == (h, w)
        dx = (xp.empty if tiled else xp.zeros)((n, hp, wp, c), dtype=dy.dtype)
        # windows no longer than the stride are disjoint: each cell is read by one tap at most
        overlapping = dh * (kh - 1) + 1 > sh or dw * (kw - 1) + 1 > sw
        for k, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw, dh, dw):
            target = dx[:, rows, cols]
            if overlapping:
                target += dy * (argmax == k)
            else:                                    # each cell is in one window at most
                xp.multiply(dy, argmax == k, out=target)
        return self._crop(dx, h, w).transpose(0, 3, 1, 2)


class AvgPool2D(_Pool2D):
    """Mean over each window: (N, C, H, W) -> (N, C, Ho, Wo). Padding counts as zeros in the
    divisor (``count_include_pad=True``, kh*kw for a window inside input and padding) or not at
    all (False: the number of input cells in the window); ``ceil_mode`` as in MaxPool2D."""

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        if not isinstance(count_include_pad, bool):
            raise TypeError(f"AvgPool2D: count_include_pad must be True or False, "
                            f"got {count_include_pad!r}")
        self.count_include_pad = count_include_pad

    def _inverse_divisors(self, h: int, w: int, ho: int, wo: int, like: Any) -> Any:
        """1 / (each window's divisor), as a (Ho, Wo, 1) array of ``like``'s module and dtype
        (for channels-last outputs), or a scalar of that dtype when every divisor is kh*kw."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        rows = _window_counts(h, kh, sh, ph, ho, self.count_include_pad)
        cols = _window_counts(w, kw, sw, pw, wo, self.count_include_pad)
        if all(r == kh for r in rows) and all(c == kw for c in cols):
            return like.dtype.type(1.0 / (kh * kw))
        inverse = [[[1.0 / (r * c)] for c in cols] for r in rows]
        return backend.get_array_module(like).asarray(inverse, dtype=like.dtype)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        xp = backend.get_array_module(x)
        self.save_for_backward(tuple(x.shape))
        if backend.is_cupy_array(x):
            from minicnn.kernels import cuda as cuda_kernels
            y = cuda_kernels.avgpool_forward_nhwc(
                xp.ascontiguousarray(x.transpose(0, 2, 3, 1)), kh, kw, sh, sw, *self.padding,
                ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad)
            return y.transpose(0, 3, 1, 2)
        xpad = self._padded(x.transpose(0, 2, 3, 1), 0.0, ho, wo)
        y = None
        for _, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw):
            if y is None:
                y = xpad[:, rows, cols].copy()
            else:
                y += xpad[:, rows, cols]
        y *= self._inverse_divisors(x.shape[2], x.shape[3], ho, wo, y)
        return y.transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), = self.pop_saved()
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = backend.get_array_module(grad_out)
        if backend.is_cupy_array(grad_out):
            from minicnn.kernels import cuda as cuda_kernels
            dx = cuda_kernels.avgpool_backward_nhwc(
                xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)), h, w,
                kh, kw, sh, sw, ph, pw, ceil_mode=self.ceil_mode,
                count_include_pad=self.count_include_pad)
            return dx.transpose(0, 3, 1, 2)
        ho, wo = grad_out.shape[2:4]
        dy = grad_out.transpose(0, 2, 3, 1) * self._inverse_divisors(h, w, ho, wo, grad_out)
        hp, wp = self._padded_size(h, w, ho, wo)
        dx = xp.zeros((n, hp, wp, c), dtype=dy.dtype)
        for _, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw):
            dx[:, rows, cols] += dy
        return self._crop(dx, h, w).transpose(0, 3, 1, 2)


class GlobalAvgPool2D(Layer):
    """Mean over all of H and W: (N, C, H, W) -> (N, C)."""

    per_sample = True

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        return (input_shape[0],)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        self.save_for_backward(tuple(x.shape))
        return x.mean(axis=(2, 3))

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), = self.pop_saved()
        scaled = grad_out * grad_out.dtype.type(1.0 / (h * w))
        xp = backend.get_array_module(grad_out)
        return xp.broadcast_to(scaled[:, :, None, None], (n, c, h, w)).copy()
