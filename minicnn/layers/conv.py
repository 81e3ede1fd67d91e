"""Conv2D: cross-correlation of NCHW images with learned filters, as im2col + one matrix multiply.

Forward, for input x (N, C, H, W), weight W (O, C, kh, kw) and bias b (O,)::

    cols = [im2col(x), 1]                  # (N*Ho*Wo, kh*kw*C + 1): one row per output position
    y    = cols @ [W'; b]                  # W' = W laid out as (kh*kw*C, O)  -> (N*Ho*Wo, O)

so every output value is the dot product of one flattened window with one flattened filter, plus
the bias, which rides along as a last column of ones (set once: im2col never writes it).
Backward is two more matrix multiplies and col2im::

    [dW'; db] = cols.T @ dy                dx = col2im(dy @ W'.T)

(``col2im_matmul`` forms ``dy @ W'.T`` one kernel tap at a time, see ``minicnn.kernels.im2col``).
The output is logically (N, O, Ho, Wo) and channels-last in memory, which is the layout the
next im2col reads fastest.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels.im2col import (
    IntPair,
    col2im_matmul,
    conv_output_size,
    im2col,
    pair,
)
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter, grad_enabled

INFERENCE_COLUMNS = 1 << 22
"""Elements of the im2col buffer per slice of the batch under ``no_grad()`` (16 MiB float32)."""


class Conv2D(Layer):
    """2-D convolution (cross-correlation), PyTorch's argument order and weight shape.

    weight: (out_channels, in_channels, kh, kw); bias: (out_channels,).
    ``padding="same"`` keeps H and W (stride 1, odd dilated kernel). ``init`` is
    'kaiming_uniform' (PyTorch's default), 'he' or 'glorot' (see ``minicnn.layers.initializers``).
    """

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair | str = 0, dilation: IntPair = 1,
                 bias: bool = True, init: str = "kaiming_uniform"):
        super().__init__()
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Conv2D: {what} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size")
        self.stride = pair(stride, "Conv2D stride")
        self.dilation = pair(dilation, "Conv2D dilation")
        self.padding = self._resolve_padding(padding)
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2D: kernel_size, stride, dilation must be >= 1 and padding "
                             f">= 0, got {kernel_size}, {stride}, {dilation}, {padding}")
        kh, kw = self.kernel_size
        fan_in, fan_out = in_channels * kh * kw, out_channels * kh * kw
        self.weight = Parameter(initializers.initialize(
            init, (out_channels, in_channels, kh, kw), fan_in, fan_out), "weight")
        self.bias = Parameter(initializers.initialize_bias(init, out_channels, fan_in),
                              "bias") if bias else None

    def _resolve_padding(self, padding: IntPair | str) -> tuple[int, int]:
        if not isinstance(padding, str):
            return pair(padding, "Conv2D padding")
        if padding != "same":
            raise TypeError("Conv2D padding must be an int, a pair of ints or 'same', "
                            f"got {padding!r}")
        if self.stride != (1, 1):
            raise ValueError(f"Conv2D: padding='same' needs stride 1, got stride {self.stride}")
        total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("Conv2D: padding='same' needs an odd (dilated) kernel size, got "
                             f"kernel_size {self.kernel_size} with dilation {self.dilation}")
        return (total[0] // 2, total[1] // 2)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.label()}: expected input shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        ho, wo = (conv_output_size(s, k, st, p, d) for s, k, st, p, d in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation))
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label()}: input {h}x{w} (padding {self.padding}) is smaller "
                             f"than the kernel {self.kernel_size} (dilation {self.dilation})")
        return (self.out_channels, ho, wo)

    def _weight_matrix(self, bias_row: bool = False) -> Any:
        """(kh*kw*C, O): the weight, rows in im2col's (i, j, c) order; with ``bias_row`` and a
        bias, the bias follows as one more row (to meet im2col's column of ones)."""
        w = self.weight.data.transpose(2, 3, 1, 0).reshape(-1, self.out_channels)
        if not bias_row or self.bias is None:
            return w
        xp = backend.get_array_module(w)
        return xp.concatenate([w, self.bias.data[None, :]], axis=0)

    def _columns(self, x: Any, ho: int, wo: int, buffer: Any) -> Any:
        """im2col(x) into ``buffer``, a (N*Ho*Wo, kh*kw*C [+ 1]) matrix; with a bias, the last
        column is ones (written by the caller when it made the buffer)."""
        kh, kw = self.kernel_size
        k = kh * kw * self.in_channels
        im2col(x, self.kernel_size, self.stride, self.padding, self.dilation,
               out=buffer[:, :k].reshape(x.shape[0], ho, wo, kh, kw, self.in_channels))
        return buffer

    def _column_buffer(self, n: int, ho: int, wo: int, dtype: Any, xp: Any,
                       key: str | None = None) -> Any:
        """An empty (n*Ho*Wo, kh*kw*C [+ 1]) matrix whose bias column already holds ones: this
        layer's reused workspace ``key``, or a new array."""
        k = self.kernel_size[0] * self.kernel_size[1] * self.in_channels
        shape = (n * ho * wo, k + (self.bias is not None))

        def ones_column(buffer: Any) -> None:
            buffer[:, k:] = 1
        if key is not None:
            return self.workspace(key, shape, dtype, xp, init=ones_column)
        buffer = xp.empty(shape, dtype=dtype)
        ones_column(buffer)
        return buffer

    def forward(self, x: Any) -> Any:
        """x (N, C, H, W) -> y (N, O, Ho, Wo)."""
        self.check_input(x, 4, "(N, C, H, W)", channels=self.in_channels)
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        if not grad_enabled():
            return self._forward_in_slices(x, ho, wo)
        xp = backend.get_array_module(x)
        cols = self._columns(x, ho, wo, self._column_buffer(x.shape[0], ho, wo, x.dtype, xp,
                                                            key="cols"))
        y = cols @ self._weight_matrix(bias_row=True)
        self.save_for_backward(tuple(x.shape), cols)
        return y.reshape(x.shape[0], ho, wo, self.out_channels).transpose(0, 3, 1, 2)

    def _forward_in_slices(self, x: Any, ho: int, wo: int) -> Any:
        """Inference: nothing is kept for backward, so im2col one slice of the batch at a
        time into one small buffer (bounded memory, cache-friendly)."""
        n, xp = x.shape[0], backend.get_array_module(x)
        y = xp.empty((n * ho * wo, self.out_channels), dtype=x.dtype)
        w = self._weight_matrix(bias_row=True)
        step = max(1, INFERENCE_COLUMNS // (ho * wo * w.shape[0]))
        buffer = self._column_buffer(min(step, n), ho, wo, x.dtype, xp)
        for start in range(0, n, step):
            part = x[start:start + step]
            rows = slice(start * ho * wo, (start + part.shape[0]) * ho * wo)
            cols = self._columns(part, ho, wo, buffer[:rows.stop - rows.start])
            xp.matmul(cols, w, out=y[rows])
        return y.reshape(n, ho, wo, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """dL/dy (N, O, Ho, Wo) -> dL/dx (N, C, H, W) (None without ``input_grad``); adds dL/dW
        and dL/db into the grads."""
        x_shape, cols = self.pop_saved()
        xp = backend.get_array_module(grad_out)
        n, o, ho, wo = grad_out.shape
        dy = xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(n * ho * wo, o)
        k = cols.shape[1] - (self.bias is not None)
        # [dW'; db].T (O, kh*kw*C [+ 1]); OpenBLAS is faster when the product's row count is the
        # smaller side (measured: 0.47 against 0.77 ms for conv1's 9 x 32, 3.1 against 3.3 ms
        # for conv2's 288 x 64)
        dw = dy.T @ cols if o <= cols.shape[1] else (cols.T @ dy).T
        kh, kw = self.kernel_size
        self.weight.grad += dw[:, :k].reshape(o, kh, kw, self.in_channels).transpose(0, 3, 1, 2)
        if self.bias is not None:
            self.bias.grad += dw[:, k]
        if not input_grad:
            return None
        return col2im_matmul(dy, self._weight_matrix(), x_shape, self.kernel_size, self.stride,
                             self.padding, self.dilation)
