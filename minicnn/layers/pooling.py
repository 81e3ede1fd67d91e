"""Max and average pooling over windows of NCHW images, and global average pooling.

Windows follow the same geometry as Conv2D (kernel, stride, padding; output size
(H + 2p - k) // s + 1), so overlapping windows (3x3 stride 2) and padding work. The NumPy path
loops over the kh*kw window taps, each one a strided slice of the whole batch, on the
channels-last view of the input. Max pooling stores, per output, the index i*kw + j of the
first maximal tap (ties go to the first in row-major order), and its backward routes each
gradient to that tap alone. Padding cells never win a max and count as zeros in an average.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels.im2col import IntPair, conv_output_size, pair
from minicnn.layers.base import Layer, grad_enabled


def _taps(kh: int, kw: int, ho: int, wo: int, sh: int, sw: int):
    """(k, (row slice, column slice)) for each window tap k = i*kw + j: the slices of the padded
    input that tap (i, j) of every window reads."""
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, (slice(i, i + sh * (ho - 1) + 1, sh),
                               slice(j, j + sw * (wo - 1) + 1, sw))


class _Pool2D(Layer):
    """Shared geometry and checks for MaxPool2D and AvgPool2D."""

    per_sample = True

    def __init__(self, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding")
        if min(self.kernel_size + self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1, padding >= 0")
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        c, h, w = input_shape
        ho, wo = (conv_output_size(s, k, st, p, 1) for s, k, st, p in
                  zip((h, w), self.kernel_size, self.stride, self.padding))
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label()}: input {h}x{w} (padding {self.padding}) is smaller "
                             f"than the window {self.kernel_size}")
        return (c, ho, wo)

    def _padded(self, x_nhwc: Any, fill: float) -> Any:
        """The channels-last input, padded with ``fill`` when padding > 0."""
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x_nhwc
        n, h, w, c = x_nhwc.shape
        xp = backend.get_array_module(x_nhwc)
        out = xp.full((n, h + 2 * ph, w + 2 * pw, c), fill, dtype=x_nhwc.dtype)
        out[:, ph:ph + h, pw:pw + w] = x_nhwc
        return out

    def _crop(self, padded: Any, h: int, w: int) -> Any:
        ph, pw = self.padding
        return padded[:, ph:ph + h, pw:pw + w]


class MaxPool2D(_Pool2D):
    """Max over each window: (N, C, H, W) -> (N, C, Ho, Wo). stride defaults to kernel_size."""

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        xp = backend.get_array_module(x)
        x_nhwc = x.transpose(0, 2, 3, 1)
        if backend.is_cupy_array(x):
            from minicnn.kernels import cuda as cuda_kernels
            y, argmax = cuda_kernels.maxpool_forward_nhwc(
                xp.ascontiguousarray(x_nhwc), kh, kw, sh, sw, *self.padding)
        else:
            xpad = self._padded(x_nhwc, float("-inf"))
            y = argmax = None
            for k, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw):
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
                xp.maximum(argmax, better.astype(argmax.dtype) * argmax.dtype.type(k),
                           out=argmax)
        self.save_for_backward(tuple(x.shape), argmax)
        return y.transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), argmax = self.pop_saved()
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = backend.get_array_module(grad_out)
        dy = grad_out.transpose(0, 2, 3, 1)
        if backend.is_cupy_array(dy):
            from minicnn.kernels import cuda as cuda_kernels
            dx = cuda_kernels.maxpool_backward_nhwc(xp.ascontiguousarray(dy), argmax, h, w,
                                                    kh, kw, sh, sw, ph, pw)
            return dx.transpose(0, 3, 1, 2)
        ho, wo = dy.shape[1:3]
        # windows that tile the input exactly write every cell below: no need to zero it first
        tiled = (kh, kw, ph, pw) == (sh, sw, 0, 0) and (ho * kh, wo * kw) == (h, w)
        dx = (xp.empty if tiled else xp.zeros)((n, h + 2 * ph, w + 2 * pw, c), dtype=dy.dtype)
        overlapping = sh < kh or sw < kw
        for k, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw):
            target = dx[:, rows, cols]
            if overlapping:
                target += dy * (argmax == k)
            else:                                    # each cell is in one window at most
                xp.multiply(dy, argmax == k, out=target)
        return self._crop(dx, h, w).transpose(0, 3, 1, 2)


class AvgPool2D(_Pool2D):
    """Mean over each window, padding counted as zeros (divides by kh*kw)."""

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        xp = backend.get_array_module(x)
        self.save_for_backward(tuple(x.shape))
        if backend.is_cupy_array(x):
            from minicnn.kernels import cuda as cuda_kernels
            y = cuda_kernels.avgpool_forward_nhwc(
                xp.ascontiguousarray(x.transpose(0, 2, 3, 1)), kh, kw, sh, sw, *self.padding)
            return y.transpose(0, 3, 1, 2)
        xpad = self._padded(x.transpose(0, 2, 3, 1), 0.0)
        y = xp.zeros((x.shape[0], ho, wo, x.shape[1]), dtype=x.dtype)
        for _, (rows, cols) in _taps(kh, kw, ho, wo, sh, sw):
            y += xpad[:, rows, cols]
        y *= y.dtype.type(1.0 / (kh * kw))
        return y.transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any) -> Any:
        (n, c, h, w), = self.pop_saved()
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = backend.get_array_module(grad_out)
        if backend.is_cupy_array(grad_out):
            from minicnn.kernels import cuda as cuda_kernels
            dx = cuda_kernels.avgpool_backward_nhwc(
                xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)), h, w,
                kh, kw, sh, sw, ph, pw)
            return dx.transpose(0, 3, 1, 2)
        dy = grad_out.transpose(0, 2, 3, 1) * grad_out.dtype.type(1.0 / (kh * kw))
        ho, wo = dy.shape[1:3]
        dx = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dy.dtype)
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
