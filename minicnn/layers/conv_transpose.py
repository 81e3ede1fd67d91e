"""ConvTranspose2D: the transposed convolution, which is Conv2D's im2col story run backwards.

A convolution maps an image (N, O, Ho, Wo) to (N, C, H, W) as ``y = im2col(x) @ W'``; the
transposed convolution with the same weight maps (N, C, H, W) back to (N, O, Ho, Wo) with the
adjoint of that linear map, ``y = col2im(x_rows @ W'.T)``. So the two layers trade places:

* ConvTranspose2D's forward is Conv2D's input gradient: ``x_rows @ W'.T`` spreads every input
  pixel over a kh*kw window of the output (W' is Conv2D's (kh*kw*O, C) weight matrix), and
  ``col2im`` adds the windows onto the image, one kernel tap at a time
  (``minicnn.kernels.im2col.col2im_matmul``, the very function Conv2D's backward calls);
* ConvTranspose2D's backward is Conv2D's forward: ``dx = im2col(dy) @ W'`` is a convolution of
  the output gradient, and ``dW' = im2col(dy).T @ x_rows`` is Conv2D's weight gradient with the
  roles of input and output gradient swapped; ``db`` sums dy over the batch and the positions.

For input x (N, C, H, W), weight W (C, O/G, kh, kw) (PyTorch's layout, which is Conv2D's weight
for the reverse direction) and bias b (O,), every pixel scatters
``x[n, c, h, w] * W[c, o, i, j]`` onto ``y[n, o, h*s - p + i*d, w*s - p + j*d]``, and
``Ho = (H - 1)*s - 2p + d*(kh - 1) + output_padding + 1`` (likewise Wo). ``output_padding``
adds rows and columns at the bottom and right: the bias reaches all of them, the windows only
those within ``padding`` of the last window's end (none with padding 0). The convolution that
maps (Ho, Wo) back has ``H + output_padding // s`` rows (more than H when a dilated kernel
allows output_padding >= stride); the input then gets zero rows/columns to fill that grid.

How the forward adds the windows up: on the GPU, ``col2im_matmul`` (one matrix multiply, then
col2im's CUDA kernel, which gathers each output pixel's taps in one thread). On the host with a
stride, the output splits into stride_h*stride_w phases (every s-th row and column), each
reached by its own taps as plain shifts, so each tap's product is added onto a contiguous
phase buffer and each phase is written once (``_scatter_by_phase``: the same sums as
``col2im_matmul``, in the same order, without its adds of O-value runs into a strided image),
a few samples at a time so that the products stay in cache; with stride 1, ``col2im_matmul``.
The host backward, too, takes a few samples at a time: im2col, then both matrix multiplies while
the columns are in cache.

Groups split C and O into G groups, input group g reaching output group g alone: the forward
runs once per group, the backward im2cols each group's channels of dy into one
(G, N*H*W, kh*kw*O/G) array for batched matrix multiplies, as Conv2D's grouped path does the
other way round. Everything runs on the array module of the input (NumPy or CuPy, whose im2col
and col2im are the CUDA kernels of ``minicnn.kernels.cuda``). Outputs are logically NCHW and
channels-last in memory, as Conv2D's are.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.kernels.im2col import IntPair, col2im_matmul, conv_output_size, im2col, pair
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter, column_sums

__all__ = ["ConvTranspose2D", "conv_transpose_output_size"]

OUTPUT_ELEMENTS = 1 << 18
"""Output elements per slice of the batch in the host forward (1 MiB float32: the per-tap
products and the phase being summed stay in cache)."""
COLUMN_ELEMENTS = 1 << 18
"""im2col elements per slice of the batch in the host backward (the columns are read by the
two matrix multiplies while they are still in cache: 17 against 29 ms for the whole batch of
ConvTranspose2D(32, 16, 4, 2, 1) on 64 x 32 x 14 x 14)."""


def conv_transpose_output_size(size: int, kernel: int, stride: int, padding: int,
                               output_padding: int, dilation: int) -> int:
    """Output length along one axis: (size - 1)*s - 2p + d*(k - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


class ConvTranspose2D(Layer):
    """2-D transposed convolution (the gradient of Conv2D with respect to its input), with
    PyTorch's arguments, weight layout and initialisation (``torch.nn.ConvTranspose2d``).

    x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo), Ho = (H - 1)*stride - 2*padding
    + dilation*(kh - 1) + output_padding + 1. weight: (in_channels, out_channels // groups, kh,
    kw); bias: (out_channels,). ``output_padding`` (per axis smaller than the stride or the
    dilation) lengthens the output at the bottom/right. ``init`` is 'kaiming_uniform'
    (PyTorch's default), 'he' or 'glorot', with fan-in (out_channels // groups) * kh * kw
    (PyTorch takes it from the weight's second axis) and fan-out in_channels * kh * kw.

    Forward is Conv2D's backward and backward is Conv2D's forward (see the module docstring):
    ``ConvTranspose2D(C, O, ...)`` computes, exactly, the input gradient of ``Conv2D(O, C, ...)``
    holding the same weight, for an output gradient equal to x.
    """

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                 groups: int = 1, bias: bool = True, dilation: IntPair = 1,
                 init: str = "kaiming_uniform"):
        super().__init__()
        for what, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ConvTranspose2D: {what} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"ConvTranspose2D: groups must divide in_channels and "
                             f"out_channels, got groups={groups} for {in_channels} -> "
                             f"{out_channels} channels")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair(kernel_size, "ConvTranspose2D: kernel_size")
        self.stride = pair(stride, "ConvTranspose2D: stride")
        self.padding = pair(padding, "ConvTranspose2D: padding")
        self.output_padding = pair(output_padding, "ConvTranspose2D: output_padding")
        self.dilation = pair(dilation, "ConvTranspose2D: dilation")
        if min(self.kernel_size + self.stride + self.dilation) < 1 or \
                min(self.padding + self.output_padding) < 0:
            raise ValueError(f"ConvTranspose2D: kernel_size, stride, dilation must be >= 1 and "
                             f"padding, output_padding >= 0, got {kernel_size}, {stride}, "
                             f"{dilation}, {padding}, {output_padding}")
        if any(op >= s and op >= d for op, s, d in
               zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2D: output_padding must be smaller than the stride "
                             f"or the dilation (per axis), got output_padding {output_padding} "
                             f"with stride {stride} and dilation {dilation}")
        if bias is not True and bias is not False:
            raise TypeError(f"ConvTranspose2D: bias must be True or False, got {bias!r}")
        if init not in initializers.INITIALIZERS:
            raise ValueError(f"ConvTranspose2D: init must be one of {initializers.INITIALIZERS}, "
                             f"got {init!r}")
        kh, kw = self.kernel_size
        fan_in, fan_out = out_channels // groups * kh * kw, in_channels * kh * kw
        self.weight = Parameter(initializers.initialize(
            init, (in_channels, out_channels // groups, kh, kw), fan_in, fan_out), "weight")
        self.bias = Parameter(initializers.initialize_bias(init, out_channels, fan_in),
                              "bias") if bias else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.label()}: expected input shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        ho, wo = (conv_transpose_output_size(*args) for args in zip(
            input_shape[1:], self.kernel_size, self.stride, self.padding, self.output_padding,
            self.dilation))
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label()}: input {input_shape[1]}x{input_shape[2]} gives "
                             f"an empty {ho}x{wo} output (padding {self.padding} is too large)")
        return (self.out_channels, ho, wo)

    def _grid(self, ho: int, wo: int) -> tuple[int, int]:
        """Rows and columns of the convolution mapping (Ho, Wo) back: H + output_padding // s
        (likewise W)."""
        return (conv_output_size(ho, self.kernel_size[0], self.stride[0], self.padding[0],
                                 self.dilation[0]),
                conv_output_size(wo, self.kernel_size[1], self.stride[1], self.padding[1],
                                 self.dilation[1]))

    def _group_weights(self) -> Any:
        """(G, kh*kw*O/G, C/G): each group's Conv2D weight matrix W', rows in im2col's (i, j, o)
        order (for one group, Conv2D's ``_weight_matrix`` of the reverse convolution)."""
        g, (kh, kw) = self.groups, self.kernel_size
        cg, og = self.in_channels // g, self.out_channels // g
        return self.weight.data.reshape(g, cg, og, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
            g, kh * kw * og, cg)

    def forward(self, x: Any) -> Any:
        """x (N, C, H, W) -> y (N, O, Ho, Wo): col2im of x_rows @ W'.T, per group, plus bias."""
        self.check_input(x, 4, "(N, C, H, W)", channels=self.in_channels)
        _, ho, wo = self.output_shape(tuple(x.shape[1:]))
        xp = backend.get_array_module(x)
        n, _, h, w = x.shape
        rows = self._rows(x, xp)
        self.save_for_backward(rows, tuple(x.shape))
        on_host = not backend.is_cupy_array(x)
        by_phase = self._scatters_by_phase(x)
        size = (h, w)
        if not by_phase and self._grid(ho, wo) != size:
            size = self._grid(ho, wo)                   # col2im needs the whole grid
            rows = _zero_extended(rows, (n, h, w), size, xp)
        y = xp.empty((n, ho, wo, self.out_channels), dtype=x.dtype)
        # on the host, a few samples at a time: the products and phases stay in cache
        step = max(1, OUTPUT_ELEMENTS // y[0].size) if on_host else n
        weights = self._group_weights()
        per_sample = size[0] * size[1]
        for first in range(0, n, step):
            last = min(n, first + step)
            self._scatter(rows[first * per_sample:last * per_sample], weights, size,
                          y[first:last], by_phase)
        return y.transpose(0, 3, 1, 2)

    def _scatters_by_phase(self, x: Any) -> bool:
        """Whether the forward sums output phase by phase (on the host, with a stride) or
        calls ``col2im_matmul`` (stride 1, where col2im's runs are long already; and on the
        GPU, whose col2im kernel gathers each output pixel's taps in one thread)."""
        return not backend.is_cupy_array(x) and self.stride != (1, 1)

    def _scatter(self, rows: Any, weights: Any, size: tuple[int, int], out: Any,
                 by_phase: bool) -> None:
        """out (M, Ho, Wo, O) = col2im(rows @ W'.T) + bias, group by group, for the rows
        (M*H*W, C) of M samples of size ``size``."""
        xp = backend.get_array_module(rows)
        g, m = self.groups, out.shape[0]
        cg, og = self.in_channels // g, self.out_channels // g
        for group in range(g):
            channels = slice(group * og, (group + 1) * og)
            group_out = out if g == 1 else out[..., channels]
            group_rows = rows if g == 1 else rows.reshape(-1, g, cg)[:, group]
            bias = None if self.bias is None else self.bias.data[channels]
            if by_phase:
                _scatter_by_phase(group_rows, weights[group], size, group_out, bias,
                                  self.kernel_size, self.stride, self.padding, self.dilation)
                continue
            image = col2im_matmul(group_rows, weights[group], (m, og, *out.shape[1:3]),
                                  self.kernel_size, self.stride, self.padding,
                                  self.dilation).transpose(0, 2, 3, 1)
            if bias is None:
                group_out[...] = image
            else:
                xp.add(image, bias, out=group_out)

    @staticmethod
    def _rows(a: Any, xp: Any) -> Any:
        """(N, C, H, W) -> its (N*H*W, C) channels-last matrix (no copy when already so)."""
        n, c, h, w = a.shape
        return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(n * h * w, c)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """dL/dy (N, O, Ho, Wo) -> dL/dx (N, C, H, W) (None without ``input_grad``): Conv2D's
        forward of dy, dx = im2col(dy) @ W'; adds dL/dW = x_rows.T @ im2col(dy) and dL/db."""
        rows, (n, c, h, w) = self.pop_saved()
        xp = backend.get_array_module(grad_out)
        g, (kh, kw) = self.groups, self.kernel_size
        cg, og = c // g, self.out_channels // g
        dy = self._rows(grad_out, xp)                   # channels-last: im2col reads it fastest
        if self.bias is not None:
            self.bias.grad += column_sums(dy)
        dy = dy.reshape(n, *grad_out.shape[2:], -1).transpose(0, 3, 1, 2)
        weights = self._group_weights()
        dx = xp.empty((n * h * w, g, cg), dtype=grad_out.dtype) if input_grad else None
        dw = xp.zeros((g, cg, kh * kw * og), dtype=grad_out.dtype)
        step = n if backend.is_cupy_array(grad_out) else \
            max(1, COLUMN_ELEMENTS // (h * w * kh * kw * self.out_channels))
        for first in range(0, n, step):
            last = min(n, first + step)
            cols = self._columns(dy[first:last], (h, w), min(step, n), xp)
            part = slice(first * h * w, last * h * w)
            # (G, C/G, kh*kw*O/G): columns in (i, j, o) order
            dw += (rows[part].T @ cols[0])[None] if g == 1 else \
                xp.matmul(rows[part].reshape(-1, g, cg).transpose(1, 2, 0), cols)
            if dx is not None:
                if g == 1:
                    xp.matmul(cols[0], weights[0], out=dx[part, 0])
                else:
                    xp.matmul(cols, weights, out=dx[part].transpose(1, 0, 2))
        self.weight.grad += dw.reshape(g, cg, kh, kw, og).transpose(0, 1, 4, 2, 3).reshape(
            c, og, kh, kw)
        return None if dx is None else dx.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    def _columns(self, dy: Any, size: tuple[int, int], capacity: int, xp: Any) -> Any:
        """im2col of each group's channels of dy (M, O, Ho, Wo) into a (G, M*H*W, kh*kw*O/G)
        array (a workspace for ``capacity`` samples): rows are the input's positions, the first
        H rows and W columns of the convolution's grid."""
        m, o, ho, wo = dy.shape
        g, (kh, kw) = self.groups, self.kernel_size
        og = o // g
        gh, gw = self._grid(ho, wo)
        space = self.workspace("cols", (g, capacity * gh * gw, kh * kw * og), dy.dtype, xp)
        cols = space[:, :m * gh * gw]
        for group in range(g):
            im2col(dy if g == 1 else dy[:, group * og:(group + 1) * og], self.kernel_size,
                   self.stride, self.padding, self.dilation,
                   out=cols[group].reshape(m, gh, gw, kh, kw, og))
        if (gh, gw) != size:
            cols = xp.ascontiguousarray(cols.reshape(g, m, gh, gw, -1)[:, :, :size[0],
                                                                       :size[1]])
            cols = cols.reshape(g, m * size[0] * size[1], -1)
        return cols

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """One ConvTranspose node: ONNX's weight layout (C, O/G, kh, kw) is this layer's."""
        args = [inputs[0], ctx.add_initializer(f"{ctx.name}.weight", self.weight.data)]
        if self.bias is not None:
            args.append(ctx.add_initializer(f"{ctx.name}.bias", self.bias.data))
        ph, pw = self.padding
        return ctx.add_node("ConvTranspose", args, [ctx.name],
                            kernel_shape=list(self.kernel_size), strides=list(self.stride),
                            pads=[ph, pw, ph, pw], dilations=list(self.dilation),
                            group=self.groups, output_padding=list(self.output_padding))[0]


def _zero_extended(rows: Any, shape: tuple[int, int, int], size: tuple[int, int],
                   xp: Any) -> Any:
    """The rows (N*H*W, C) of images (N, H, W) inside images of zeros of ``size`` (grid rows
    and columns when output_padding >= stride), as (N*gh*gw, C)."""
    n, h, w = shape
    full = xp.zeros((n, *size, rows.shape[1]), dtype=rows.dtype)
    full[:, :h, :w] = rows.reshape(n, h, w, -1)
    return full.reshape(-1, rows.shape[1])


def _axis_taps(kernel: int, stride: int, padding: int, dilation: int, size: int,
               out_size: int) -> list[tuple[int, int, int, int]]:
    """Per kernel tap i along one axis, (phase, shift, lo, hi): input positions [lo, hi) land
    on output positions (position + shift)*stride + phase, rows [lo + shift, hi + shift) of
    that phase's sub-image (every stride-th output row from ``phase`` on)."""
    taps = []
    for i in range(kernel):
        offset = i * dilation - padding
        phase = offset % stride
        shift = (offset - phase) // stride
        rows = max(0, -(-(out_size - phase) // stride))
        taps.append((phase, shift, max(0, -shift), max(0, min(size, rows - shift))))
    return taps


def _scatter_by_phase(rows: Any, w: Any, size: tuple[int, int], out: Any, bias: Any | None,
                      kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int], dilation: tuple[int, int]) -> None:
    """``out[...] = col2im(rows @ w.T) + bias`` for rows (N*H*W, C), w (kh*kw*O, C) (rows in
    im2col's (i, j, o) order) and out (N, Ho, Wo, O) (a view may be given); for host arrays.

    With a stride, the output splits into stride_h * stride_w phases (sub-images of every s-th
    row and column), each reached by its own taps, each tap a plain shift within it. So each
    tap's product ``rows @ w[tap].T`` is added onto a contiguous phase buffer (long runs of
    memory, where col2im adds runs of O values into the strided image), and each phase is
    written into ``out`` once, with the bias. Taps are added in col2im's (i, j) order, from
    zero or from the first tap's product when it covers its whole phase (0 + t is t), so the
    sums are col2im_matmul's bit for bit (but for the sign of a zero)."""
    xp = backend.get_array_module(rows)
    (h, w_in), (ho, wo) = size, out.shape[1:3]
    n, o = rows.shape[0] // (h * w_in), out.shape[3]
    (kh, kw), (sh, sw) = kernel_size, stride
    row_taps = _axis_taps(kh, sh, padding[0], dilation[0], h, ho)
    col_taps = _axis_taps(kw, sw, padding[1], dilation[1], w_in, wo)
    part = None
    for a in range(min(sh, ho)):
        for b in range(min(sw, wo)):
            target = out[:, a::sh, b::sw]
            taps = [(i * kw + j, row_taps[i][1:], col_taps[j][1:])
                    for i in range(kh) for j in range(kw)
                    if row_taps[i][0] == a and col_taps[j][0] == b
                    and row_taps[i][3] > row_taps[i][2] and col_taps[j][3] > col_taps[j][2]]
            first = taps[0] if taps else None
            if first is not None and first[1:] == ((0, 0, h), (0, 0, w_in)) and \
                    target.shape[1:3] == (h, w_in):
                phase = xp.matmul(rows, w[first[0] * o:(first[0] + 1) * o].T)
                phase = phase.reshape(target.shape)
                taps = taps[1:]
            else:
                phase = xp.zeros(target.shape, dtype=out.dtype)
            for k, (e, lo, hi), (f, clo, chi) in taps:
                part = xp.matmul(rows, w[k * o:(k + 1) * o].T, out=part)
                phase[:, lo + e:hi + e, clo + f:chi + f] += \
                    part.reshape(n, h, w_in, o)[:, lo:hi, clo:chi]
            if bias is None:
                target[...] = phase
            else:
                xp.add(phase, bias, out=target)
