"""Depthwise convolution (groups == in_channels) as one multiply-accumulate per kernel tap.

For input x (N, C, H, W), weight W (C*k, 1, kh, kw) (depth multiplier k, PyTorch's layout:
output channel c*k + m reads input channel c alone), stride (sh, sw), dilation (dh, dw) and
padding (top, left, bottom, right)::

    y[n, c*k + m, oh, ow] = sum over (i, j) of
                            W[c*k + m, 0, i, j] * xpad[n, c, oh*sh + i*dh, ow*sw + j*dw]

Channels-last (NHWC), each tap (i, j) is one strided slice of the padded image, (N, Ho, Wo, C),
times a per-channel weight vector broadcast along the last axis: kh*kw element-wise passes, and
no (N*Ho*Wo, kh*kw*C) im2col matrix (k*kh*kw multiply-adds per output are far too few for a
matrix multiply to pay for that copy). With stride 1 and no depth multiplier the input
gradient is the depthwise convolution of dy with the flipped kernel, otherwise it adds
``dy * W[tap]`` back onto the same slices; the weight gradient sums ``slice * dy`` over
(N, Ho, Wo).

On NumPy the batch is processed in slices of a few samples so that the padded slice, the
product and the output stay in cache across the kh*kw passes (larger slices in a replica of a
split batch, ``SPLIT_SLICE_ELEMENTS``); on CuPy the whole batch is one slice (the same array
code, one elementwise kernel per pass).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.core.batch_sum import replica_count

Pads = tuple[int, int, int, int]
"""(top, left, bottom, right) zero padding."""

SLICE_ELEMENTS = 1 << 16
"""Padded-input elements per batch slice on NumPy in one thread (256 KiB float32: the working
set of one pass, input slice, product and output, stays within the L2 cache). Measured for 3x3
on (128, 64, 28, 28), forward / backward ms: 83 / 211 with 2**16 (one sample a slice), 118 / 301
with 2**18, 177 / 1241 with 2**20 (a busy 2-core machine: ratios, not absolute times)."""

SPLIT_SLICE_ELEMENTS = 1 << 18
"""The same when the batch is split among replicas in threads (``batch_sum.replica_count() >
1``): threads running NumPy calls side by side hand the interpreter lock over at every call,
so fewer, larger calls pay more than the cache does. Measured on 2 cores, a one-layer model's
step (forward + backward, 128 images, medians of 12): 3x3 depthwise on 64x28x28 83 ms with
2**16, 51 ms with 2**18, 58 ms with 2**19; on 32x28x28 40 / 30 / 33 ms; MobileNet's training
step 0.81x and 0.92x of 2**16's in two runs (2**19: 0.80x and 0.87x, 2**20 slower again).
Unsplit, the larger slices cost 4-10%."""


def output_size(size: int, kernel: int, stride: int, before: int, after: int,
                dilation: int) -> int:
    """Window positions along one axis: (size + before + after - d(k-1) - 1) // s + 1."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def _geometry(x_shape: tuple[int, ...], weight_shape: tuple[int, ...],
              stride: tuple[int, int], dilation: tuple[int, int],
              pads: Pads) -> tuple[int, int, int, int, int, int, int, int, int]:
    n, c, h, w = x_shape
    o, _, kh, kw = weight_shape
    top, left, bottom, right = pads
    ho = output_size(h, kh, stride[0], top, bottom, dilation[0])
    wo = output_size(w, kw, stride[1], left, right, dilation[1])
    return n, c, h, w, o // c, kh, kw, ho, wo


def _taps(kh: int, kw: int, ho: int, wo: int, stride: tuple[int, int],
          dilation: tuple[int, int]) -> list[tuple[int, int, slice, slice]]:
    """(i, j, rows, cols): the slices of the padded image that tap (i, j) reads."""
    (sh, sw), (dh, dw) = stride, dilation
    return [(i, j, slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
             slice(j * dw, j * dw + (wo - 1) * sw + 1, sw)) for i in range(kh) for j in range(kw)]


def _tap_weights(weight: Any, c: int, k: int, wo: int) -> Any:
    """(kh, kw, Wo, C) or, with a depth multiplier k > 1, (kh, kw, Wo, C, k): each tap's
    per-channel weights repeated along an output row. A row of a channels-last slice is Wo*C
    contiguous values; a (Wo, C) weight lets NumPy run one loop over all of them where a (C,)
    vector broadcast along Wo would cut it into loops of C."""
    kh, kw = weight.shape[2:]
    taps = weight.reshape(c, k, kh, kw).transpose(2, 3, 0, 1)
    taps = taps[:, :, None, :, 0] if k == 1 else taps[:, :, None]
    xp = backend.get_array_module(weight)
    return xp.ascontiguousarray(xp.broadcast_to(taps, (kh, kw, wo) + taps.shape[3:]))


class _PaddedSlices:
    """The batch in slices, each zero-padded and channels-last: (m, H+top+bottom, W+left+right,
    C). One buffer is reused (its border stays zero); an unpadded channels-last input is read in
    place."""

    def __init__(self, x: Any, pads: Pads, step: int):
        self.x = x.transpose(0, 2, 3, 1)
        self.pads = pads
        n, h, w, c = self.x.shape
        top, left, bottom, right = pads
        self.in_place = not any(pads) and self.x.flags.c_contiguous
        self.buffer: Any = None if self.in_place else backend.get_array_module(x).zeros(
            (min(step, n), h + top + bottom, w + left + right, c), dtype=x.dtype)

    def buffer_shape(self) -> tuple[int, int]:
        """(H + top + bottom, W + left + right): a padded slice's rows and columns."""
        top, left, bottom, right = self.pads
        return self.x.shape[1] + top + bottom, self.x.shape[2] + left + right

    def get(self, start: int, stop: int) -> Any:
        if self.in_place:
            return self.x[start:stop]
        top, left = self.pads[:2]
        h, w = self.x.shape[1:3]
        padded = self.buffer[:stop - start]
        padded[:, top:top + h, left:left + w] = self.x[start:stop]
        return padded


def _slice_step(x: Any, pads: Pads) -> int:
    """Samples per slice: SLICE_ELEMENTS (SPLIT_SLICE_ELEMENTS in a replica) of padded input;
    the whole batch on CuPy."""
    n, c, h, w = x.shape
    if backend.is_cupy_array(x):
        return n
    per_sample = (h + pads[0] + pads[2]) * (w + pads[1] + pads[3]) * c
    budget = SLICE_ELEMENTS if replica_count() == 1 else SPLIT_SLICE_ELEMENTS
    return max(1, budget // per_sample)


def depthwise_forward(x: Any, weight: Any, bias: Any | None, stride: tuple[int, int],
                      dilation: tuple[int, int], pads: Pads) -> Any:
    """x (N, C, H, W), weight (C*k, 1, kh, kw), bias (C*k,) or None -> y (N, C*k, Ho, Wo),
    channels-last in memory."""
    xp = backend.get_array_module(x)
    n, c, h, w, k, kh, kw, ho, wo = _geometry(x.shape, weight.shape, stride, dilation, pads)
    taps = _taps(kh, kw, ho, wo, stride, dilation)
    tap_w = _tap_weights(weight, c, k, wo)
    tail = (c,) if k == 1 else (c, k)
    y = xp.empty((n, ho, wo) + tail, dtype=x.dtype)
    step = _slice_step(x, pads)
    source = _PaddedSlices(x, pads, step)
    if k == 1 and stride == (1, 1) and not backend.is_cupy_array(x):
        return _forward_flat(source, weight, bias, dilation, y, step)
    product = xp.empty((min(step, n), ho, wo) + tail, dtype=x.dtype)
    for start in range(0, n, step):
        stop = min(n, start + step)
        padded, out = source.get(start, stop), y[start:stop]
        part = product[:stop - start]
        for t, (i, j, rows, cols) in enumerate(taps):
            window = padded[:, rows, cols]
            if k > 1:
                window = window[..., None]
            xp.multiply(window, tap_w[i, j], out=out if t == 0 else part)
            if t:
                out += part
        if bias is not None:
            out += bias.reshape(tail)
    return y.reshape(n, ho, wo, c * k).transpose(0, 3, 1, 2)


def _forward_flat(source: _PaddedSlices, weight: Any, bias: Any | None,
                  dilation: tuple[int, int], y: Any, step: int) -> Any:
    """``depthwise_forward`` for stride 1 without depth multiplier, on NumPy: each tap as one
    pass over a contiguous 1-D run of the padded slice. Output (n, oh, ow) is computed at flat
    position ((n*Hp + oh)*Wp + ow)*C of a padded-size grid, where tap (i, j) reads the input
    at a fixed offset ((i*dh)*Wp + j*dw)*C; the grid's columns ow >= Wo are discarded when the
    slice is copied into y. The weights are tiled along a whole slice so that every operand is
    contiguous (measured 1.6x faster per sample than the strided (N, Ho, Wo, C) windows, for
    3x3 on 64x28x28; 7% more multiply-adds for Wp = 30 against Wo = 28)."""
    xp = backend.get_array_module(y)
    n, ho, wo, c = y.shape
    kh, kw = weight.shape[2:]
    hp, wp = source.buffer_shape()
    rows = (min(step, n) - 1) * hp + ho          # grid rows up to the last sample's last output
    tiled = xp.ascontiguousarray(xp.broadcast_to(
        weight.reshape(c, kh, kw).transpose(1, 2, 0)[:, :, None, :], (kh, kw, rows * wp, c)))
    grid = xp.empty(min(step, n) * hp * wp * c, dtype=y.dtype)
    part = xp.empty_like(grid)
    # the bias as a (Wo, C) row, added while the grid is copied out (a (C,) vector would cut
    # NumPy's loop into runs of C)
    bias_row = None if bias is None else xp.ascontiguousarray(xp.broadcast_to(bias, (wo, c)))
    offsets = [(i * dilation[0] * wp + j * dilation[1]) * c for i in range(kh) for j in range(kw)]
    for start in range(0, n, step):
        stop = min(n, start + step)
        flat = source.get(start, stop).reshape(-1)
        length = ((stop - start - 1) * hp * wp + (ho - 1) * wp + wo) * c
        out = grid[:length]
        for t, offset in enumerate(offsets):
            tap_w = tiled[t // kw, t % kw].reshape(-1)[:length]
            xp.multiply(flat[offset:offset + length], tap_w, out=out if t == 0 else part[:length])
            if t:
                out += part[:length]
        valid = grid.reshape(-1, hp, wp, c)[:stop - start, :ho, :wo]
        if bias_row is None:
            y[start:stop] = valid
        else:
            xp.add(valid, bias_row, out=y[start:stop])
    return y.transpose(0, 3, 1, 2)


def _flipped_pads(weight_shape: tuple[int, ...], dilation: tuple[int, int],
                  pads: Pads) -> Pads:
    """The padding under which correlating dy with the flipped kernel gives dL/dx (stride 1):
    the kernel's dilated extent minus each side's padding."""
    th, tw = (d * (k - 1) for d, k in zip(dilation, weight_shape[2:]))
    top, left, bottom, right = pads
    return (th - top, tw - left, th - bottom, tw - right)


def depthwise_backward(x: Any, weight: Any, grad_out: Any, stride: tuple[int, int],
                       dilation: tuple[int, int], pads: Pads,
                       input_grad: bool = True) -> tuple[Any | None, Any]:
    """For ``depthwise_forward``: dL/dy (N, C*k, Ho, Wo) -> (dL/dx (N, C, H, W), channels-last
    memory, or None without ``input_grad``; dL/dW (C*k, 1, kh, kw)). The bias gradient is the
    caller's (a sum of dy).

    With stride 1 and no depth multiplier, dL/dx is itself a depthwise convolution: dy
    correlated with the flipped kernel (``depthwise_forward``), each output gathering its kh*kw
    terms into a contiguous slice (measured 1.6x faster than adding every tap's ``dy * W[tap]``
    onto strided slices of a padded dL/dx, which the other cases still do)."""
    xp = backend.get_array_module(grad_out)
    n, c, h, w, k, kh, kw, ho, wo = _geometry(x.shape, weight.shape, stride, dilation, pads)
    gather_pads = _flipped_pads(weight.shape, dilation, pads)
    gather = input_grad and k == 1 and stride == (1, 1) and min(gather_pads) >= 0
    taps = _taps(kh, kw, ho, wo, stride, dilation)
    tail = (c,) if k == 1 else (c, k)
    dy = xp.ascontiguousarray(grad_out.transpose(0, 2, 3, 1)).reshape((n, ho, wo) + tail)
    dw = xp.empty((kh, kw) + tail, dtype=grad_out.dtype)
    step = _slice_step(x, pads)
    source = _PaddedSlices(x, pads, step)
    scatter = input_grad and not gather
    if scatter:
        top, left = pads[:2]
        tap_w = _tap_weights(weight, c, k, wo)
        product = xp.empty((min(step, n), ho, wo) + tail, dtype=grad_out.dtype)
        dx = xp.empty((n, h, w, c), dtype=grad_out.dtype)
        dx_padded = xp.empty((min(step, n), h + top + pads[2], w + left + pads[3], c),
                             dtype=grad_out.dtype)
        if k > 1:
            spread = xp.empty((min(step, n), ho, wo, c), dtype=grad_out.dtype)
    # each tap's weight gradient, sum over (n, Ho, Wo) of slice * dy, as one einsum: one pass
    # over both (measured 15% faster than multiply, then a ones-vector matrix product)
    terms = "nhwc,nhwc->c" if k == 1 else "nhwc,nhwck->ck"
    for start in range(0, n, step):
        stop = min(n, start + step)
        m = stop - start
        padded, g = source.get(start, stop), dy[start:stop]
        for i, j, rows, cols in taps:
            partial = xp.einsum(terms, padded[:, rows, cols], g)
            if start:
                dw[i, j] += partial
            else:
                dw[i, j] = partial
        if not scatter:
            continue
        part, dx_part = product[:m], dx_padded[:m]
        dx_part.fill(0)
        for i, j, rows, cols in taps:
            xp.multiply(g, tap_w[i, j], out=part)
            # with a depth multiplier, input channel c gathers its k outputs' terms
            dx_part[:, rows, cols] += part if k == 1 else part.sum(axis=-1, out=spread[:m])
        dx[start:stop] = dx_part[:, top:top + h, left:left + w]
    dweight = xp.ascontiguousarray(dw.reshape(kh, kw, c * k).transpose(2, 0, 1)[:, None])
    if gather:
        # dy's channels-last copy: its padded slices are plain copies, not transposes
        return depthwise_forward(dy.transpose(0, 3, 1, 2), weight[:, :, ::-1, ::-1], None,
                                 (1, 1), dilation, gather_pads), dweight
    return (dx.transpose(0, 3, 1, 2) if scatter else None), dweight
