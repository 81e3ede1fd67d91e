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

Grouped convolution (``groups`` G > 1) splits the C input and O output channels into G groups,
output group g seeing input group g alone; the weight is (O, C/G, kh, kw), PyTorch's layout.
Depthwise convolution (G == C: one input channel per group, O = k*C) has too few multiply-adds
per output for a matrix multiply to pay for im2col's copy, and runs as kh*kw channels-last
multiply-accumulate passes (``minicnn.kernels.depthwise``). Other groupings im2col each input
group into one (G, N*Ho*Wo, kh*kw*C/G) array and multiply it by the (G, kh*kw*C/G, O/G) weight
in one batched matrix multiply. ``padding="same"`` with an even (dilated) kernel pads one more
row and column at the bottom and right (as PyTorch): the im2col paths get that extra row and
column as explicit zeros (``_pad_end``).

A 3x3 stride-1 convolution may instead run as Winograd F(2x2, 3x3) (``minicnn.kernels.winograd``):
16 matrix products of a quarter of the rows and 1/9 of the columns of im2col's, 2.25x fewer
multiplies, for the price of adding whole arrays to and from 4x4 tiles: ``algorithm=
"winograd"``, or ``"auto"`` for Winograd only where one core measured it faster (at least
``WINOGRAD_MIN_CHANNELS`` input channels, even output sizes). Neither is the default: one core
runs a VGG step in 0.84-0.87x of im2col's time with it, but on two cores a whole step measured
no faster (docs/performance.md).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels import winograd
from minicnn.kernels.depthwise import Pads, depthwise_backward, depthwise_forward
from minicnn.kernels.im2col import (
    IntPair,
    col2im_matmul,
    conv_output_size,
    im2col,
    pair,
)
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter, column_sums, grad_enabled

INFERENCE_COLUMNS = 1 << 22
"""Elements of the im2col buffer per slice of the batch under ``no_grad()`` (16 MiB float32)."""
ALGORITHMS = ("im2col", "winograd", "auto")
WINOGRAD_MIN_CHANNELS = 32
"""``algorithm="auto"`` runs Winograd from this many input channels, at even output sizes (an
odd one leaves half of the last row of 2x2 blocks empty), on NumPy: where one core measured it
faster (docs/performance.md)."""


def _matmul_into(a: Any, b: Any, out: Any) -> None:
    """out[...] = a @ b: on NumPy straight into ``out`` (a strided view is fine there); CuPy's
    matmul is not relied on to write a non-contiguous ``out``, so it copies the product in."""
    xp = backend.get_array_module(a)
    if backend.is_cupy_array(a) and not out.flags.c_contiguous:
        out[...] = xp.matmul(a, b)
    else:
        xp.matmul(a, b, out=out)


class Conv2D(Layer):
    """2-D convolution (cross-correlation), PyTorch's argument order and weight shape.

    weight: (out_channels, in_channels // groups, kh, kw); bias: (out_channels,). ``groups``
    must divide both channel counts. ``padding`` is an int, a pair, "valid" (none) or "same"
    (keeps H and W; stride 1; an even dilated kernel pads one more at the bottom/right).
    ``pads`` is the padding as (top, left, bottom, right); ``padding`` its (top, left) pair.
    ``init`` is 'kaiming_uniform' (PyTorch's default), 'he' or 'glorot' (see
    ``minicnn.layers.initializers``), with fan-in (in_channels // groups) * kh * kw.
    ``algorithm``: 'im2col', 'winograd' (3x3, stride 1, dilation 1, groups 1 only) or 'auto'
    (Winograd where it applies and one core measured it faster, else im2col): the same
    function either way, to float rounding; depthwise convolution has its own path.
    """

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair | str = 0, dilation: IntPair = 1,
                 groups: int = 1, bias: bool = True, init: str = "kaiming_uniform",
                 algorithm: str = "im2col"):
        super().__init__()
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2D: {what} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2D: groups must divide in_channels and out_channels, got "
                             f"groups={groups} for {in_channels} -> {out_channels} channels")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size")
        self.stride = pair(stride, "Conv2D stride")
        self.dilation = pair(dilation, "Conv2D dilation")
        self.pads: Pads = self._resolve_padding(padding)
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.pads) < 0:
            raise ValueError(f"Conv2D: kernel_size, stride, dilation must be >= 1 and padding "
                             f">= 0, got {kernel_size}, {stride}, {dilation}, {padding}")
        self.padding = (self.pads[0], self.pads[1])
        self.algorithm = algorithm
        kh, kw = self.kernel_size
        fan_in, fan_out = in_channels // groups * kh * kw, out_channels * kh * kw
        self.weight = Parameter(initializers.initialize(
            init, (out_channels, in_channels // groups, kh, kw), fan_in, fan_out), "weight")
        self.bias = Parameter(initializers.initialize_bias(init, out_channels, fan_in),
                              "bias") if bias else None

    def _resolve_padding(self, padding: IntPair | str) -> Pads:
        """(top, left, bottom, right)."""
        if not isinstance(padding, str):
            ph, pw = pair(padding, "Conv2D padding")
            return (ph, pw, ph, pw)
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError("Conv2D: padding must be an int, a pair of ints, 'valid' or "
                             f"'same', got {padding!r}")
        if self.stride != (1, 1):
            raise ValueError(f"Conv2D: padding='same' needs stride 1, got stride {self.stride}")
        th, tw = (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
        return (th // 2, tw // 2, th - th // 2, tw - tw // 2)

    @property
    def algorithm(self) -> str:
        """'im2col', 'winograd' or 'auto'; may be changed between steps (the config follows)."""
        return str(self._algorithm)

    @algorithm.setter
    def algorithm(self, value: str) -> None:
        if value not in ALGORITHMS:
            raise ValueError(f"Conv2D: algorithm must be one of {ALGORITHMS}, got {value!r}")
        if value == "winograd" and not self.winograd_applies:
            raise ValueError("Conv2D: algorithm='winograd' needs a 3x3 kernel, stride 1, "
                             f"dilation 1 and groups 1, got kernel {self.kernel_size}, stride "
                             f"{self.stride}, dilation {self.dilation}, groups {self.groups}")
        self._algorithm = value
        self.__dict__.get("_init_args", {})["algorithm"] = value

    @property
    def winograd_applies(self) -> bool:
        """Whether ``algorithm='winograd'`` can run: 3x3 kernel, stride 1, no dilation or groups."""
        return (self.kernel_size, self.stride, self.dilation, self.groups) == \
            ((3, 3), (1, 1), (1, 1), 1)

    def _uses_winograd(self, x: Any, ho: int, wo: int) -> bool:
        if self.algorithm != "auto":
            return self.algorithm == "winograd"
        return (self.winograd_applies and self.in_channels >= WINOGRAD_MIN_CHANNELS
                and ho % 2 == wo % 2 == 0 and not backend.is_cupy_array(x))

    @property
    def depthwise(self) -> bool:
        """Whether this is a depthwise convolution: one input channel per group (C > 1)."""
        return self.groups == self.in_channels > 1

    def _pad_end(self, x: Any) -> Any:
        """x, or x with the bottom/right padding beyond the top/left as explicit zero rows and
        columns (channels-last memory), so that im2col's symmetric padding does the rest."""
        top, left, bottom, right = self.pads
        if bottom == top and right == left:
            return x
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        wide = xp.zeros((n, h + bottom - top, w + right - left, c), dtype=x.dtype)
        wide[:, :h, :w] = x.transpose(0, 2, 3, 1)
        return wide.transpose(0, 3, 1, 2)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.label()}: expected input shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        top, left, bottom, right = self.pads
        ho, wo = (conv_output_size(s, k, st, p, d) for s, k, st, p, d in zip(
            (h + bottom - top, w + right - left), self.kernel_size, self.stride, self.padding,
            self.dilation))
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
        if self.depthwise:
            self.save_for_backward(x)
            return depthwise_forward(x, self.weight.data, None if self.bias is None else
                                     self.bias.data, self.stride, self.dilation, self.pads)
        if self._uses_winograd(x, ho, wo):
            return self._winograd_forward(x, ho, wo)
        size = tuple(x.shape[2:])
        x = self._pad_end(x)
        if self.groups > 1:
            return self._grouped_forward(x, ho, wo, size)
        if not grad_enabled():
            return self._forward_in_slices(x, ho, wo)
        xp = backend.get_array_module(x)
        cols = self._columns(x, ho, wo, self._column_buffer(x.shape[0], ho, wo, x.dtype, xp,
                                                            key="cols"))
        y = cols @ self._weight_matrix(bias_row=True)
        self.save_for_backward("im2col", tuple(x.shape), cols, size)
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
        if self.depthwise:
            (x,) = self.pop_saved()
            return self._depthwise_backward(x, grad_out, input_grad)
        if self.groups > 1:
            return self._grouped_backward(grad_out, input_grad)
        path, *saved = self.pop_saved()
        if path == "winograd":
            return self._winograd_backward(grad_out, input_grad, *saved)
        x_shape, cols, size = saved
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
        dx = col2im_matmul(dy, self._weight_matrix(), x_shape, self.kernel_size, self.stride,
                           self.padding, self.dilation)
        return dx if x_shape[2:] == size else dx[:, :, :size[0], :size[1]]

    # --- Winograd F(2x2, 3x3) --------------------------------------------------------------
    def _winograd_forward(self, x: Any, ho: int, wo: int) -> Any:
        """x (N, C, H, W) -> y (N, O, Ho, Wo), channels-last. Keeps V for backward (4*N*H*W*C
        values against im2col's 9*N*H*W*C); under ``no_grad()``, one slice of the batch at a
        time."""
        xp, n = backend.get_array_module(x), x.shape[0]
        x_nhwc = x.transpose(0, 2, 3, 1)
        bias = None if self.bias is None else self.bias.data
        if grad_enabled():
            y, v, u = winograd.conv_forward(x_nhwc, self.weight.data, bias, self.pads)
            self.save_for_backward("winograd", tuple(x_nhwc.shape), v, u)
            return y.transpose(0, 3, 1, 2)
        y = xp.empty((n, ho, wo, self.out_channels), dtype=x.dtype)
        u = winograd.weight_transform(self.weight.data)
        step = max(1, INFERENCE_COLUMNS // (4 * ho * wo * self.in_channels))
        for start in range(0, n, step):
            y[start:start + step] = winograd.conv_forward(
                x_nhwc[start:start + step], self.weight.data, bias, self.pads, u)[0]
        return y.transpose(0, 3, 1, 2)

    def _winograd_backward(self, grad_out: Any, input_grad: bool,
                           x_shape: tuple[int, int, int, int], v: list[Any],
                           u: list[Any]) -> Any:
        dx, dw, bias_rows = winograd.conv_backward(grad_out.transpose(0, 2, 3, 1), v, u,
                                                   x_shape, self.pads, input_grad)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += column_sums(bias_rows)
        return None if dx is None else dx.transpose(0, 3, 1, 2)

    # --- groups > 1 ---------------------------------------------------------------------
    def _depthwise_backward(self, x: Any, grad_out: Any, input_grad: bool) -> Any:
        dx, dw = depthwise_backward(x, self.weight.data, grad_out, self.stride, self.dilation,
                                    self.pads, input_grad)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += self._bias_grad(grad_out)
        return dx

    def _bias_grad(self, grad_out: Any) -> Any:
        xp = backend.get_array_module(grad_out)
        n, o, ho, wo = grad_out.shape
        return column_sums(xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(-1, o))

    def _group_weights(self) -> Any:
        """(G, kh*kw*C/G, O/G): each group's weight matrix, rows in im2col's (i, j, c) order."""
        g, (kh, kw) = self.groups, self.kernel_size
        cg, og = self.in_channels // g, self.out_channels // g
        return self.weight.data.reshape(g, og, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
            g, kh * kw * cg, og)

    def _grouped_forward(self, x: Any, ho: int, wo: int, size: tuple[int, ...]) -> Any:
        """1 < groups < C: each input group's im2col into one (G, N*Ho*Wo, kh*kw*C/G) array,
        times the group weights in one batched matrix multiply -> (G, N*Ho*Wo, O/G). Under
        ``no_grad()`` one slice of the batch at a time (as ``_forward_in_slices``)."""
        xp = backend.get_array_module(x)
        n, g, (kh, kw) = x.shape[0], self.groups, self.kernel_size
        k = kh * kw * self.in_channels // g
        weights = self._group_weights()
        if grad_enabled():
            cols = self._grouped_columns(x, ho, wo, self.workspace(
                "group_cols", (g, n * ho * wo, k), x.dtype, xp))
            self.save_for_backward(tuple(x.shape), cols, size)
            return self._grouped_product(cols, weights, n, ho, wo).transpose(0, 3, 1, 2)
        y = xp.empty((n, ho, wo, self.out_channels), dtype=x.dtype)
        step = max(1, INFERENCE_COLUMNS // (ho * wo * k * g))
        buffer = xp.empty((g, min(step, n) * ho * wo, k), dtype=x.dtype)
        for start in range(0, n, step):
            part = x[start:start + step]
            cols = self._grouped_columns(part, ho, wo, buffer[:, :part.shape[0] * ho * wo])
            y[start:start + part.shape[0]] = self._grouped_product(cols, weights, part.shape[0],
                                                                   ho, wo)
        return y.transpose(0, 3, 1, 2)

    def _grouped_columns(self, x: Any, ho: int, wo: int, cols: Any) -> Any:
        """im2col of each input group of x into ``cols[group]``, (N*Ho*Wo, kh*kw*C/G)."""
        n, (kh, kw) = x.shape[0], self.kernel_size
        cg = self.in_channels // self.groups
        for group in range(self.groups):                # cols[group]: contiguous rows
            im2col(x[:, group * cg:(group + 1) * cg], self.kernel_size, self.stride,
                   self.padding, self.dilation, out=cols[group].reshape(n, ho, wo, kh, kw, cg))
        return cols

    def _grouped_product(self, cols: Any, weights: Any, n: int, ho: int, wo: int) -> Any:
        """(G, N*Ho*Wo, K) @ (G, K, O/G) -> (N, Ho, Wo, O) (channels-last), plus the bias."""
        xp = backend.get_array_module(cols)
        y = xp.empty((n, ho, wo, self.out_channels), dtype=cols.dtype)
        # the product written straight into y's (G, N*Ho*Wo, O/G) view: no copy of a (G, ...)
        # result into channels-last (measured 18.6 against 19.5 ms single-threaded, 32x64x28x28,
        # groups=4)
        _matmul_into(cols, weights, y.reshape(-1, self.groups, weights.shape[2]).transpose(
            1, 0, 2))
        if self.bias is not None:
            y += self.bias.data
        return y

    def _grouped_backward(self, grad_out: Any, input_grad: bool) -> Any:
        """dW_g = cols_g.T @ dy_g for every group in one batched multiply; dx group by group
        with ``col2im_matmul``."""
        x_shape, cols, size = self.pop_saved()
        xp = backend.get_array_module(grad_out)
        n, o, ho, wo = grad_out.shape
        g, (kh, kw) = self.groups, self.kernel_size
        cg, og = self.in_channels // g, o // g
        dy = xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape(n * ho * wo, o)
        dy_groups = dy.reshape(-1, g, og).transpose(1, 0, 2)              # (G, N*Ho*Wo, O/G)
        # (G, O/G, kh*kw*C/G): as for groups == 1, OpenBLAS is faster with the smaller side as
        # the product's rows (measured 15 against 19 ms single-threaded, 32x64x28x28, groups=4)
        dw = xp.matmul(dy_groups.transpose(0, 2, 1), cols)
        self.weight.grad += dw.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2)
        if self.bias is not None:
            self.bias.grad += column_sums(dy)
        if not input_grad:
            return None
        if self.stride == (1, 1) and all(d * (k - 1) >= p for d, k, p in zip(
                self.dilation, self.kernel_size, self.padding)):
            dx = self._grouped_input_grad(grad_out, x_shape)
        else:
            weights = self._group_weights()
            dx = xp.empty((n, x_shape[2], x_shape[3], self.in_channels), dtype=grad_out.dtype)
            for group in range(g):
                part = col2im_matmul(dy_groups[group], weights[group], (n, cg) + x_shape[2:],
                                     self.kernel_size, self.stride, self.padding, self.dilation)
                dx[..., group * cg:(group + 1) * cg] = part.transpose(0, 2, 3, 1)
        return dx.transpose(0, 3, 1, 2)[:, :, :size[0], :size[1]]

    def _grouped_input_grad(self, grad_out: Any, x_shape: tuple[int, ...]) -> Any:
        """Stride 1: dL/dx (N, H, W, C), channels-last, as the grouped convolution of dy
        (N, O, Ho, Wo) with the flipped, transposed kernel, padded by the dilated kernel extent
        minus the padding: each group's im2col of dy times a (kh*kw*O/G, C/G) matrix, all groups
        in one batched multiply, written straight into dx's channels-last memory (measured 27
        against 33 ms single-threaded for dy 32x64x28x28, groups=4, than ``col2im_matmul``
        group by group, whose per-tap (N*Ho*Wo, O/G) @ (O/G, C/G) products are thin for BLAS,
        and 46 against 200 ms with 2 OpenBLAS threads)."""
        xp = backend.get_array_module(grad_out)
        n, o, ho, wo = grad_out.shape
        g, (kh, kw), h, w = self.groups, self.kernel_size, x_shape[2], x_shape[3]
        cg, og = self.in_channels // g, o // g
        (dh, dw), (ph, pw) = self.dilation, self.padding
        pads = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
        flipped = self.weight.data[:, :, ::-1, ::-1].reshape(g, og, cg, kh, kw).transpose(
            0, 3, 4, 1, 2).reshape(g, kh * kw * og, cg)     # rows in im2col's (i, j, o) order
        cols = self.workspace("group_dx_cols", (g, n * h * w, kh * kw * og), grad_out.dtype, xp)
        for group in range(g):
            im2col(grad_out[:, group * og:(group + 1) * og], self.kernel_size, 1, pads,
                   self.dilation, out=cols[group].reshape(n, h, w, kh, kw, og))
        dx = xp.empty((n, h, w, self.in_channels), dtype=grad_out.dtype)
        _matmul_into(cols, flipped, dx.reshape(-1, g, cg).transpose(1, 0, 2))
        return dx
