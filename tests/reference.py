"""Naive reference implementations used by the tests: plain loops written from the definitions.

Nothing here imports minicnn; everything is NumPy in float64 and deliberately slow and literal,
so that a test comparing minicnn against these checks minicnn against the textbook definition,
not against another vectorised implementation.
"""
from __future__ import annotations

import numpy as np


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def zero_pad(x, ph, pw, fill=0.0):
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=np.float64)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


# --------------------------------------------------------------------------- convolution

def conv2d_forward(x, weight, bias, stride=1, padding=0, dilation=1, groups=1):
    """y[n, o, oh, ow] = b[o] + sum over (c, i, j) of
    W[o, c, i, j] * xpad[n, g*C/G + c, oh*s + i*d, ow*s + j*d],  g = o // (O/G).

    Each output value is the sum of the element-wise product of one (dilated) window of the
    zero-padded input with one filter; with ``groups`` G, output o sees only input group g.
    ``padding`` is an int, a pair or (top, left, bottom, right).
    """
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    assert c == cg * groups and o % groups == 0
    xpad = _pad_sides(x, padding)
    ho = (xpad.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xpad.shape[3] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for b in range(n):
        for f in range(o):
            g = f // (o // groups)
            for oh in range(ho):
                for ow in range(wo):
                    r, q = oh * sh, ow * sw
                    window = xpad[b, g * cg:(g + 1) * cg, r:r + dh * (kh - 1) + 1:dh,
                                  q:q + dw * (kw - 1) + 1:dw]
                    y[b, f, oh, ow] = np.sum(window * weight[f]) + (0.0 if bias is None
                                                                    else bias[f])
    return y


def _pad_sides(x, padding):
    """Zero-pad (N, C, H, W) by an int, a pair or (top, left, bottom, right)."""
    top, left, bottom, right = (tuple(padding) if not isinstance(padding, int)
                                and len(padding) == 4 else pair(padding) * 2)
    return np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv2d_backward(x, weight, grad_out, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of L = sum(y * grad_out) for ``conv2d_forward``: (dx, dW, db), by the same loops.

    Every term W[o,c,i,j] * xpad[n,g*C/G+c,r,q] of the forward sum contributes grad_out[n,o,oh,ow]
    times the other factor to the gradient of each factor; padding cells are cropped at the end.
    """
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    ho, wo = grad_out.shape[2:]
    xpad = _pad_sides(x, padding)
    top, left = (padding[0], padding[1]) if not isinstance(padding, int) else (padding, padding)
    dxpad = np.zeros_like(xpad)
    dweight = np.zeros(weight.shape)
    dbias = np.zeros(o)
    for b in range(n):
        for f in range(o):
            chans = slice(f // (o // groups) * cg, (f // (o // groups) + 1) * cg)
            for oh in range(ho):
                for ow in range(wo):
                    g = grad_out[b, f, oh, ow]
                    rows = slice(oh * sh, oh * sh + dh * (kh - 1) + 1, dh)
                    cols = slice(ow * sw, ow * sw + dw * (kw - 1) + 1, dw)
                    dxpad[b, chans, rows, cols] += g * weight[f]
                    dweight[f] += g * xpad[b, chans, rows, cols]
                    dbias[f] += g
    return dxpad[:, :, top:top + h, left:left + w], dweight, dbias


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Entry (n, oh, ow, i, j, c) = x[n, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], or 0 outside."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(kernel_size), pair(stride), pair(padding),
                                              pair(dilation))
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(w, kw, sw, pw, dw)
    cols = np.zeros((n, ho, wo, kh, kw, c))
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c):
                            r = oh * sh - ph + i * dh
                            q = ow * sw - pw + j * dw
                            if 0 <= r < h and 0 <= q < w:
                                cols[b, oh, ow, i, j, ch] = x[b, ch, r, q]
    return cols


# --------------------------------------------------------------------------- pooling

def pool_out_size(size, k, s, p, d=1, ceil_mode=False):
    """PyTorch's pooling output length: floor (or ceil) of (size + 2p - d(k-1) - 1) / s, plus
    one; in ceil mode a last window starting at size + p or later is dropped."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _windows(h, w, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """(oh, ow, the window's cells (r, q) in row-major tap order, padding and beyond included)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    dh, dw = pair(dilation)
    ho = pool_out_size(h, kh, sh, ph, dh, ceil_mode)
    wo = pool_out_size(w, kw, sw, pw, dw, ceil_mode)
    for oh in range(ho):
        for ow in range(wo):
            yield oh, ow, [(oh * sh - ph + i * dh, ow * sw - pw + j * dw) for i in range(kh)
                           for j in range(kw)]


def _avg_divisor(h, w, taps, padding, count_include_pad):
    """PyTorch's avg_pool2d divisor: the window's cells inside the input and its padding, or
    inside the input alone (cells past the right padding, from ceil_mode, never count)."""
    ph, pw = pair(padding)
    if count_include_pad:
        return sum(1 for r, q in taps if r < h + ph and q < w + pw)
    return sum(1 for r, q in taps if 0 <= r < h and 0 <= q < w)


def _pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode, reduce):
    """y[b, ch, oh, ow] = reduce(the window's cells inside the image, all its cells)."""
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    geometry = (kernel_size, stride, padding, dilation, ceil_mode)
    windows = list(_windows(h, w, *geometry))
    y = np.zeros((n, c, windows[-1][0] + 1, windows[-1][1] + 1))
    for b in range(n):
        for ch in range(c):
            for oh, ow, taps in windows:
                y[b, ch, oh, ow] = reduce([x[b, ch, r, q] for r, q in taps
                                           if 0 <= r < h and 0 <= q < w], taps)
    return y


def maxpool_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max over each window, padding cells excluded (they never win; -inf for a window of
    padding alone)."""
    return _pool_forward(x, kernel_size, stride, padding, dilation, ceil_mode,
                         lambda cells, taps: max(cells, default=-np.inf))


def maxpool_backward(x, grad_out, kernel_size, stride=None, padding=0, dilation=1,
                     ceil_mode=False):
    """Each window's gradient goes to its first maximal element (row-major); overlaps add up."""
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            for oh, ow, taps in _windows(h, w, kernel_size, stride, padding, dilation,
                                         ceil_mode):
                best = None
                for r, q in taps:
                    if 0 <= r < h and 0 <= q < w and (best is None or x[b, ch, r, q] >
                                                      x[b, ch, best[0], best[1]]):
                        best = (r, q)
                if best is not None:
                    dx[b, ch, best[0], best[1]] += grad_out[b, ch, oh, ow]
    return dx


def avgpool_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                    count_include_pad=True):
    """Sum over each window's cells inside the image (padding counts as zeros) divided by
    _avg_divisor (kh * kw for a window inside input and padding, with count_include_pad)."""
    h, w = x.shape[2:]
    return _pool_forward(x, kernel_size, stride, padding, 1, ceil_mode, lambda cells, taps:
                         sum(cells) / _avg_divisor(h, w, taps, padding, count_include_pad))


def avgpool_backward(x, grad_out, kernel_size, stride=None, padding=0, ceil_mode=False,
                     count_include_pad=True):
    stride = kernel_size if stride is None else stride
    n, c, h, w = x.shape
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            for oh, ow, taps in _windows(h, w, kernel_size, stride, padding, 1, ceil_mode):
                divisor = _avg_divisor(h, w, taps, padding, count_include_pad)
                for r, q in taps:
                    if 0 <= r < h and 0 <= q < w:
                        dx[b, ch, r, q] += grad_out[b, ch, oh, ow] / divisor
    return dx


# --------------------------------------------------------------------------- losses

def softmax_cross_entropy(logits, labels):
    """Mean over rows of -log(exp(z_y) / sum_k exp(z_k)), each row evaluated in Python floats
    with the row maximum subtracted (the textbook stable form)."""
    total = 0.0
    for row, label in zip(np.asarray(logits, dtype=np.float64), labels):
        m = max(row)
        log_sum = m + np.log(sum(np.exp(v - m) for v in row))
        total += log_sum - row[label]
    return total / len(labels)


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- SGD

def sgd_reference(params, grads_per_step, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's documented update (dampening 0), element by element in Python floats.

    params: list of float arrays; grads_per_step: list (steps) of lists (one per param) of grads.
    Returns the parameters after every step.
    """
    params = [np.array(p, dtype=np.float64) for p in params]
    bufs = [None] * len(params)
    history = []
    for grads in grads_per_step:
        for k, (p, g) in enumerate(zip(params, grads)):
            flat_p, flat_g = p.reshape(-1), np.asarray(g, dtype=np.float64).reshape(-1)
            if bufs[k] is None:
                bufs[k] = [None] * flat_p.size
            for e in range(flat_p.size):
                gt = float(flat_g[e]) + weight_decay * float(flat_p[e])
                if momentum != 0:
                    b = gt if bufs[k][e] is None else momentum * bufs[k][e] + gt
                    bufs[k][e] = b
                    gt = gt + momentum * b if nesterov else b
                flat_p[e] = float(flat_p[e]) - lr * gt
        history.append([p.copy() for p in params])
    return history


# --------------------------------------------------------------------------- random configurations

def conv_config(seed):
    """A random convolution geometry, reproducible from ``seed``: kernel 1-3 per axis (often
    non-square), stride 1-3, padding 0-2, dilation 1-2, batch 1-2, channels 1 or 3, and an input
    just large enough (plus 0-4 pixels) for at least one output position."""
    rng = np.random.default_rng(1000 + seed)
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = (int(v) for v in rng.integers(0, 3, size=2))
    dh, dw = (int(v) for v in rng.integers(1, 3, size=2))
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + int(rng.integers(0, 5))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + int(rng.integers(0, 5))
    return {"n": int(rng.choice([1, 2])), "c": int(rng.choice([1, 3])),
            "o": int(rng.choice([1, 2])), "h": h, "w": w, "kernel_size": (kh, kw),
            "stride": (sh, sw), "padding": (ph, pw), "dilation": (dh, dw)}


def pool_config(seed):
    """A random pooling geometry: kernel 1-3 per axis, stride 1-3, padding at most half the
    kernel (as PyTorch requires), batch 1-2, channels 1 or 3."""
    rng = np.random.default_rng(2000 + seed)
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    h = max(1, kh - 2 * ph) + int(rng.integers(0, 5))
    w = max(1, kw - 2 * pw) + int(rng.integers(0, 5))
    return {"n": int(rng.choice([1, 2])), "c": int(rng.choice([1, 3])), "h": h, "w": w,
            "kernel_size": (kh, kw), "stride": (sh, sw), "padding": (ph, pw)}


# ------------------------------------------------------------------ more activations
# GELU, SiLU, ELU, Softplus, ReLU6, Hardswish, PReLU, LogSoftmax, from their definitions

import math  # noqa: E402  (this section's own import, kept with it)


def _elementwise(f, x):
    """f applied to each element of x in Python floats (math functions), float64 result."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([f(float(v)) for v in x.reshape(-1)]).reshape(x.shape)


def gelu(x):
    return _elementwise(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))), x)


def gelu_grad(x):
    return _elementwise(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
                        + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi), x)


def _gelu_tanh_inner(v):
    return math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)


def gelu_tanh(x):
    return _elementwise(lambda v: 0.5 * v * (1 + math.tanh(_gelu_tanh_inner(v))), x)


def gelu_tanh_grad(x):
    def d(v):
        t = math.tanh(_gelu_tanh_inner(v))
        return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * math.sqrt(2 / math.pi) * \
            (1 + 3 * 0.044715 * v * v)
    return _elementwise(d, x)


def _sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def silu(x):
    return _elementwise(lambda v: v * _sigmoid(v), x)


def silu_grad(x):
    return _elementwise(lambda v: _sigmoid(v) * (1 + v * (1 - _sigmoid(v))), x)


def elu(x, alpha=1.0):
    return _elementwise(lambda v: v if v > 0 else alpha * math.expm1(v), x)


def elu_grad(x, alpha=1.0):
    return _elementwise(lambda v: 1.0 if v > 0 else alpha * math.exp(v), x)


def softplus(x, beta=1.0, threshold=20.0):
    return _elementwise(lambda v: v if beta * v > threshold else
                        math.log1p(math.exp(beta * v)) / beta, x)


def softplus_grad(x, beta=1.0, threshold=20.0):
    return _elementwise(lambda v: 1.0 if beta * v > threshold else _sigmoid(beta * v), x)


def relu6(x):
    return _elementwise(lambda v: min(max(v, 0.0), 6.0), x)


def relu6_grad(x):
    return _elementwise(lambda v: 1.0 if 0 < v < 6 else 0.0, x)


def hardswish(x):
    return _elementwise(lambda v: v * min(max(v + 3, 0.0), 6.0) / 6, x)


def hardswish_grad(x):
    return _elementwise(lambda v: 0.0 if v < -3 else 1.0 if v > 3 else v / 3 + 0.5, x)


def prelu(x, slope):
    return _elementwise(lambda v: v if v > 0 else slope * v, x)


def prelu_grad(x, slope):
    return _elementwise(lambda v: 1.0 if v > 0 else slope, x)


def log_softmax(x, axis):
    """Each 1-D slice along ``axis``: v_i - log(sum_j exp(v_j)), by a loop over the slice with
    the maximum shifted out."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        row = [float(v) for v in x[index]]
        m = max(row)
        log_sum = m + math.log(sum(math.exp(v - m) for v in row))
        out[index] = [v - log_sum for v in row]
    return np.moveaxis(out, -1, axis)


# ------------------------------------------------------------------ more losses
# cross-entropy with class weights and label smoothing, BCE with logits (PyTorch's formulas)

def cross_entropy_smoothed(logits, labels, smoothing=0.0, weight=None):
    """((1 - eps) sum_i w[y_i] l[i, y_i] + eps/K sum_i sum_k w[k] l[i, k]) / sum_i w[y_i],
    l[i, k] = -log softmax(logits[i])[k], by loops in Python floats."""
    n, k = len(logits), len(logits[0])
    w = [1.0] * k if weight is None else [float(v) for v in weight]
    numerator = denominator = 0.0
    for i in range(n):
        row = [float(v) for v in logits[i]]
        m = max(row)
        log_sum = m + math.log(sum(math.exp(v - m) for v in row))
        nll = [log_sum - v for v in row]
        y = int(labels[i])
        numerator += (1 - smoothing) * w[y] * nll[y]
        numerator += smoothing / k * sum(w[j] * nll[j] for j in range(k))
        denominator += w[y]
    return numerator / denominator


def bce_with_logits(logits, targets):
    """Mean over elements of -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), each log
    written with log1p/exp of -|x| so it stays finite."""
    xs = np.asarray(logits, dtype=np.float64).reshape(-1)
    ys = np.asarray(targets, dtype=np.float64).reshape(-1)
    total = 0.0
    for x, y in zip(xs.tolist(), ys.tolist()):
        log_sig = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
        log_one_minus = -x + log_sig                      # log(1 - sigmoid(x))
        total += -(y * log_sig + (1 - y) * log_one_minus)
    return total / len(xs)


# ------------------------------------------------------------------ resizing and padding

def upsample_source_nearest(d, scale):
    """Nearest: output index d reads input index floor(d / scale)."""
    return int(np.floor(d / scale))


def upsample_source_bilinear(d, size_in, scale, align_corners):
    """Bilinear: ((lower, weight), (upper, weight)) that output index d blends, PyTorch's rule:
    src = d * (L - 1) / (L*s - 1) with align_corners, else (d + 0.5) / s - 0.5 clamped at 0;
    lower = floor(src), upper = lower + 1 clamped to L - 1, weights 1 - f and f, f = src - lower."""
    size_out = size_in * scale
    if align_corners:
        src = d * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    else:
        src = max((d + 0.5) / scale - 0.5, 0.0)
    lower = min(int(np.floor(src)), size_in - 1)
    upper = min(lower + 1, size_in - 1)
    frac = src - lower
    return (lower, 1.0 - frac), (upper, frac)


def _upsample_taps(h, w, scale, mode, align_corners):
    """For each output cell (oh, ow): the (ih, iw, weight) input cells it sums."""
    sh, sw = pair(scale)
    for oh in range(h * sh):
        for ow in range(w * sw):
            if mode == "nearest":
                yield oh, ow, [(upsample_source_nearest(oh, sh),
                                upsample_source_nearest(ow, sw), 1.0)]
            else:
                rows = upsample_source_bilinear(oh, h, sh, align_corners)
                cols = upsample_source_bilinear(ow, w, sw, align_corners)
                yield oh, ow, [(ih, iw, a * b) for ih, a in rows for iw, b in cols]


def upsample_forward(x, scale, mode="nearest", align_corners=False):
    """y[n, c, oh, ow] = sum over the taps (ih, iw, weight) of weight * x[n, c, ih, iw]."""
    n, c, h, w = x.shape
    sh, sw = pair(scale)
    y = np.zeros((n, c, h * sh, w * sw))
    for oh, ow, taps in _upsample_taps(h, w, scale, mode, align_corners):
        for ih, iw, weight in taps:
            y[:, :, oh, ow] += weight * x[:, :, ih, iw]
    return y


def upsample_backward(x_shape, grad_out, scale, mode="nearest", align_corners=False):
    """dx[n, c, ih, iw] = sum over the outputs that read (ih, iw) of weight * dy there."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h, w))
    for oh, ow, taps in _upsample_taps(h, w, scale, mode, align_corners):
        for ih, iw, weight in taps:
            dx[:, :, ih, iw] += weight * grad_out[:, :, oh, ow]
    return dx


def zero_pad_forward(x, left, right, top, bottom):
    """y[n, c, i, j] = x[n, c, i - top, j - left] where that is inside x, else 0 (negative
    amounts remove rows / columns)."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, h + top + bottom, w + left + right))
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            if 0 <= i - top < h and 0 <= j - left < w:
                y[:, :, i, j] = x[:, :, i - top, j - left]
    return y


def zero_pad_backward(x_shape, grad_out, left, right, top, bottom):
    """dx[n, c, i, j] = dy[n, c, i + top, j + left] where that is inside y, else 0."""
    n, c, h, w = x_shape
    dx = np.zeros((n, c, h, w))
    for i in range(h):
        for j in range(w):
            if 0 <= i + top < grad_out.shape[2] and 0 <= j + left < grad_out.shape[3]:
                dx[:, :, i, j] = grad_out[:, :, i + top, j + left]
    return dx


# ------------------------------------------------------------------ global and adaptive pooling

def global_maxpool_forward(x):
    """y[b, ch] = max over every (r, q) of x[b, ch, r, q]."""
    n, c, h, w = x.shape
    y = np.zeros((n, c))
    for b in range(n):
        for ch in range(c):
            y[b, ch] = max(x[b, ch, r, q] for r in range(h) for q in range(w))
    return y


def global_maxpool_backward(x, grad_out):
    """Each (sample, channel)'s gradient goes to its first maximum in row-major order."""
    n, c, h, w = x.shape
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            best = (0, 0)
            for r in range(h):
                for q in range(w):
                    if x[b, ch, r, q] > x[b, ch, best[0], best[1]]:
                        best = (r, q)
            dx[b, ch, best[0], best[1]] += grad_out[b, ch]
    return dx


def adaptive_window(i, size, out):
    """PyTorch's adaptive window i of out over size cells: [floor(i*size/out),
    ceil((i+1)*size/out))."""
    return (i * size) // out, -(-((i + 1) * size) // out)


def adaptive_avgpool_forward(x, output_size):
    """y[b, ch, i, j] = mean of x[b, ch] over rows and columns of adaptive windows i and j."""
    (oh, ow), (n, c, h, w) = pair(output_size), x.shape
    y = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                r0, r1 = adaptive_window(i, h, oh)
                for j in range(ow):
                    q0, q1 = adaptive_window(j, w, ow)
                    cells = [x[b, ch, r, q] for r in range(r0, r1) for q in range(q0, q1)]
                    y[b, ch, i, j] = sum(cells) / len(cells)
    return y


def adaptive_avgpool_backward(x, grad_out, output_size):
    (oh, ow), (n, c, h, w) = pair(output_size), x.shape
    dx = np.zeros(x.shape)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                r0, r1 = adaptive_window(i, h, oh)
                for j in range(ow):
                    q0, q1 = adaptive_window(j, w, ow)
                    for r in range(r0, r1):
                        for q in range(q0, q1):
                            dx[b, ch, r, q] += grad_out[b, ch, i, j] / ((r1 - r0) * (q1 - q0))
    return dx


# ------------------------------------------------------------------ normalisation layers

def _normalize_groups(x, group_of, weight_of, weight, bias, eps, grad_out=None, stats=None):
    """The definition every normalisation shares, one group of elements at a time.

    ``group_of(index)`` names the group an element of x is normalised with, ``weight_of(index)``
    the weight/bias entry it is scaled by (weight None: no affine). y = w * (x - mean) /
    sqrt(var + eps) + b with the group's mean and biased variance (or ``stats[group]`` =
    (mean, var), constants). With ``grad_out``, also (dx, dweight, dbias) by the chain rule
    through the Jacobian of x_hat: d x_hat_j / d x_i = (delta_ij - 1/m - x_hat_i x_hat_j / m)
    / sqrt(var + eps), its last two terms absent when the statistics are constants.
    """
    groups = {}
    for index in np.ndindex(*x.shape):
        groups.setdefault(group_of(index), []).append(index)
    y, dx = np.zeros(x.shape), np.zeros(x.shape)
    dweight = None if weight is None else np.zeros(weight.shape)
    dbias = None if weight is None else np.zeros(weight.shape)
    for key, members in groups.items():
        m = len(members)
        if stats is None:
            mean = sum(x[i] for i in members) / m
            var = sum((x[i] - mean) ** 2 for i in members) / m
        else:
            mean, var = stats[key]
        std = np.sqrt(var + eps)
        x_hat = {i: (x[i] - mean) / std for i in members}
        for i in members:
            w, b = (1.0, 0.0) if weight is None else (weight[weight_of(i)], bias[weight_of(i)])
            y[i] = w * x_hat[i] + b
        if grad_out is None:
            continue
        for i in members:
            if weight is not None:
                dweight[weight_of(i)] += grad_out[i] * x_hat[i]
                dbias[weight_of(i)] += grad_out[i]
            for j in members:
                w = 1.0 if weight is None else weight[weight_of(j)]
                jacobian = (i == j) - ((1 + x_hat[i] * x_hat[j]) / m if stats is None else 0)
                dx[i] += grad_out[j] * w * jacobian / std
    return y if grad_out is None else (y, dx, dweight, dbias)


def batchnorm_reference(x, weight, bias, eps=1e-5, grad_out=None, running=None):
    """BatchNorm of (N, C, ...) x: channel c's statistics over every sample and position
    (``running`` = (mean, var) arrays of shape (C,): evaluation mode)."""
    stats = None if running is None else {c: (running[0][c], running[1][c])
                                          for c in range(x.shape[1])}
    return _normalize_groups(x, lambda i: i[1], lambda i: i[1], weight, bias, eps,
                             grad_out, stats)


def layernorm_reference(x, normalized_ndim, weight, bias, eps=1e-5, grad_out=None):
    """LayerNorm over the last ``normalized_ndim`` axes: one group per leading index, weight
    indexed by the trailing ones."""
    k = normalized_ndim
    return _normalize_groups(x, lambda i: i[:-k], lambda i: i[-k:], weight, bias, eps,
                             grad_out)


def groupnorm_reference(x, num_groups, weight, bias, eps=1e-5, grad_out=None):
    """GroupNorm of (N, C, ...) x: sample n's group g holds channels g*C/G .. (g+1)*C/G - 1
    at every position; weight per channel."""
    per_group = x.shape[1] // num_groups
    return _normalize_groups(x, lambda i: (i[0], i[1] // per_group), lambda i: i[1], weight,
                             bias, eps, grad_out)


def running_statistics_reference(batches, momentum=0.1):
    """BatchNorm's running (mean, var) over the channels (axis 1) after training forwards on
    ``batches``: running = (1 - momentum) * running + momentum * batch statistic, with the
    unbiased batch variance, from mean 0 and var 1."""
    c = batches[0].shape[1]
    mean, var = np.zeros(c), np.ones(c)
    for x in batches:
        for ch in range(c):
            values = np.moveaxis(x, 1, 0)[ch].ravel()
            mu = sum(values) / len(values)
            unbiased = sum((v - mu) ** 2 for v in values) / (len(values) - 1)
            mean[ch] = (1 - momentum) * mean[ch] + momentum * mu
            var[ch] = (1 - momentum) * var[ch] + momentum * unbiased
    return mean, var


# ------------------------------------------------------------------ transposed convolution

def conv_transpose2d_forward(x, weight, bias, stride=1, padding=0, output_padding=0,
                             dilation=1, groups=1):
    """Scatter form, from the definition: every input pixel x[n, c, h, w] adds
    x[n, c, h, w] * W[c, o, i, j] onto y[n, g*O/G + o, h*s - p + i*d, w*s - p + j*d] (kept when
    inside the output), g = c // (C/G); then b[o] is added everywhere. W is (C, O/G, kh, kw) and
    the output is ((H-1)*s - 2p + d*(k-1) + output_padding + 1) along each axis."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = (pair(stride), pair(padding),
                                                pair(output_padding), pair(dilation))
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    cg = c // groups
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    y = np.zeros((n, og * groups, ho, wo))
    for b in range(n):
        for ch in range(c):
            g = ch // cg
            for r in range(h):
                for q in range(w):
                    for o in range(og):
                        for i in range(kh):
                            for j in range(kw):
                                u, v = r * sh - ph + i * dh, q * sw - pw + j * dw
                                if 0 <= u < ho and 0 <= v < wo:
                                    y[b, g * og + o, u, v] += x[b, ch, r, q] * weight[ch, o, i, j]
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv_transpose2d_backward(x, weight, grad_out, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of L = sum(y * grad_out) for ``conv_transpose2d_forward``: (dx, dW, db), by the
    same loops: each term x[n,c,h,w] * W[c,o,i,j] landing on output (u, v) gives grad_out there
    times the other factor to each factor's gradient."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n, c, h, w = x.shape
    _, og, kh, kw = weight.shape
    cg = c // groups
    ho, wo = grad_out.shape[2:]
    dx, dweight = np.zeros(x.shape), np.zeros(weight.shape)
    for b in range(n):
        for ch in range(c):
            g = ch // cg
            for r in range(h):
                for q in range(w):
                    for o in range(og):
                        for i in range(kh):
                            for j in range(kw):
                                u, v = r * sh - ph + i * dh, q * sw - pw + j * dw
                                if 0 <= u < ho and 0 <= v < wo:
                                    gy = grad_out[b, g * og + o, u, v]
                                    dx[b, ch, r, q] += gy * weight[ch, o, i, j]
                                    dweight[ch, o, i, j] += gy * x[b, ch, r, q]
    return dx, dweight, np.asarray(grad_out, dtype=np.float64).sum(axis=(0, 2, 3))
