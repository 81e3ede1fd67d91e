"""Determinism of the CUDA backward kernels (minicnn.kernels.cuda), checked without a GPU.

The rule: **no kernel accumulates in an order that depends on scheduling**. No source in
``KERNEL_SOURCES`` calls an atomic (``atomicAdd`` and friends), and every backward kernel
(col2im, max- and average-pool backward) is a *gather*: one thread per input-gradient pixel
loops over the windows that cover it in a fixed order (kernel tap ``i`` then ``j``, ascending),
sums their contributions in a register and writes its output once. The result then depends only
on the inputs, never on which thread runs first, so a GPU run resumed from a checkpoint ends
bit-identical to an uninterrupted one, as on the CPU.

Without a GPU this is checked by a *fake*: a pure-Python emulation of each gather kernel's index
arithmetic (the same loops, ``break`` and ``continue`` as the CUDA code, one "thread" at a time,
accumulating in the kernel's element type), run in launch order and in a shuffled order, and
compared with minicnn's NumPy paths and tests/reference.py. A test also pins the emulated lines
to the CUDA source, so the fake cannot silently drift from the kernels.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import reference as ref

from minicnn.kernels import cuda as cuda_kernels
from minicnn.kernels.im2col import col2im, conv_output_size
from minicnn.layers.pooling import AvgPool2D, MaxPool2D, pool_output_size

# ------------------------------------------------------------------------------ the static rule


def test_no_kernel_source_uses_atomics():
    """Determinism rule: no CUDA source calls an atomic (atomicAdd, atomicCAS, ...), whose
    order of accumulation would depend on thread scheduling."""
    assert cuda_kernels.KERNEL_SOURCES
    for unit, source in cuda_kernels.KERNEL_SOURCES.items():
        calls = re.findall(r"\b(atomic\w*)\s*\(", source)
        assert not calls, f"unit {unit!r} uses {sorted(set(calls))}"
        assert "__threadfence" not in source and "__shfl" not in source, unit


def _kernel_body(name):
    """The CUDA text of kernel template ``name`` (from its declaration to the next one)."""
    for source in cuda_kernels.KERNEL_SOURCES.values():
        start = source.find(f"__global__ void {name}(")
        if start >= 0:
            end = source.find("__global__", start + 1)
            return source[start:end if end >= 0 else None]
    raise AssertionError(f"kernel {name} not found")


# The lines of each gather kernel that the emulations below copy; whitespace-insensitive.
GATHER_LINES = {
    "col2im_nhwc": [
        "for (int i = 0; i < kh; ++i)", "const int th = h + ph - i * dh;",
        "if (th < 0) break;", "if (th % sh != 0) continue;", "if (oh >= Ho) continue;",
        "for (int j = 0; j < kw; ++j)", "const int tw = w + pw - j * dw;",
        "if (tw < 0) break;", "if (tw % sw != 0) continue;", "if (ow >= Wo) continue;",
        "acc += cols[((((n * Ho + oh) * Wo + ow) * kh + i) * kw + j) * C + c];",
        "x[idx] = acc;",
    ],
    "maxpool_backward_nhwc": [
        "const int th = h + ph - i * dh;", "if (th < 0) break;", "if (th % sh != 0) continue;",
        "const int tw = w + pw - j * dw;", "if (tw < 0) break;", "if (tw % sw != 0) continue;",
        "if (argmax[o] == i * kw + j) acc += dy[o];", "dx[idx] = acc;",
    ],
    "avgpool_backward_nhwc": [
        "const int th = h + ph - i;", "if (th < 0) break;", "if (th % sh != 0) continue;",
        "const int tw = w + pw - j;", "if (tw < 0) break;", "if (tw % sw != 0) continue;",
        "const int d = avgpool_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw,"
        " ph, pw, count_include_pad);",
        "acc += dy[((n * Ho + oh) * Wo + ow) * C + c] / T(d);", "dx[idx] = acc;",
    ],
    "maxpool_forward_nhwc": [
        "const int h = h0 + i * dh;", "const int w = w0 + j * dw;",
        "if (best_k < 0 || v > best || (v != v && best == best))", "best_k = i * kw + j;",
    ],
    "avgpool_forward_nhwc": [
        "y[idx] = acc / T(avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw, count_include_pad));",
    ],
}

# The divisor helper's lines, which avgpool_divisor below copies.
DIVISOR_LINES = [
    "const int h1 = min(h0 + kh, H + ph);", "const int w1 = min(w0 + kw, W + pw);",
    "if (count_include_pad) return (h1 - h0) * (w1 - w0);",
    "return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0));",
]


def test_emulated_divisor_is_in_the_cuda_source():
    source = re.sub(r"\s+", "", cuda_kernels.KERNEL_SOURCES["pool"])
    for line in DIVISOR_LINES:
        assert re.sub(r"\s+", "", line) in source, f"avgpool_divisor: {line!r} not in the source"


@pytest.mark.parametrize("name", sorted(GATHER_LINES))
def test_emulated_lines_are_in_the_cuda_source(name):
    body = re.sub(r"\s+", "", _kernel_body(name))
    for line in GATHER_LINES[name]:
        assert re.sub(r"\s+", "", line) in body, f"{name}: {line!r} not in the CUDA source"
    # gather form: the output is written once, at the thread's own index
    out = "x" if name == "col2im_nhwc" else ("y" if "forward" in name else "dx")
    assert len(re.findall(rf"\b{out}\[", body)) == 1, name
    assert re.search(rf"\b{out}\[idx\]=", body), name


# ------------------------------------------------------------------------- the emulated kernels
# Each *_thread function is the body of one grid-stride iteration for flat output index idx,
# with the kernel's loops; T is the element type (np.float32 / np.float64), so the sums round as
# the GPU's do. Arrays are flat, as the kernel sees them.


def col2im_thread(idx, cols, T, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    t = idx
    c = t % C
    t //= C
    w = t % W
    t //= W
    h = t % H
    n = t // H
    acc = T(0)
    for i in range(kh):
        th = h + ph - i * dh
        if th < 0:
            break
        if th % sh != 0:
            continue
        oh = th // sh
        if oh >= Ho:
            continue
        for j in range(kw):
            tw = w + pw - j * dw
            if tw < 0:
                break
            if tw % sw != 0:
                continue
            ow = tw // sw
            if ow >= Wo:
                continue
            acc = T(acc + cols[((((n * Ho + oh) * Wo + ow) * kh + i) * kw + j) * C + c])
    return acc


def avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw, count_include_pad):
    """The kernels' avgpool_divisor (PyTorch's avg_pool2d divisor)."""
    h1 = min(h0 + kh, H + ph)
    w1 = min(w0 + kw, W + pw)
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


def _pool_backward_thread(idx, dy, argmax, T, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw,
                          count_include_pad):
    """maxpool_backward_nhwc when argmax is given, else avgpool_backward_nhwc (dh = dw = 1)."""
    t = idx
    c = t % C
    t //= C
    w = t % W
    t //= W
    h = t % H
    n = t // H
    acc = T(0)
    for i in range(kh):
        th = h + ph - i * dh
        if th < 0:
            break
        if th % sh != 0:
            continue
        oh = th // sh
        if oh >= Ho:
            continue
        for j in range(kw):
            tw = w + pw - j * dw
            if tw < 0:
                break
            if tw % sw != 0:
                continue
            ow = tw // sw
            if ow >= Wo:
                continue
            o = ((n * Ho + oh) * Wo + ow) * C + c
            if argmax is None:
                d = avgpool_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw, ph, pw,
                                    count_include_pad)
                acc = T(acc + T(dy[o] / T(d)))
            elif argmax[o] == i * kw + j:
                acc = T(acc + dy[o])
    return acc


def maxpool_forward_thread(idx, x, T, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """(y, argmax) of one output of maxpool_forward_nhwc: the first maximum wins ties."""
    t = idx
    c = t % C
    t //= C
    ow = t % Wo
    t //= Wo
    oh = t % Ho
    n = t // Ho
    best, best_k = T(-np.inf), -1
    for i in range(kh):
        h = oh * sh - ph + i * dh
        if h < 0 or h >= H:
            continue
        for j in range(kw):
            w = ow * sw - pw + j * dw
            if w < 0 or w >= W:
                continue
            v = x[((n * H + h) * W + w) * C + c]
            if best_k < 0 or v > best or (v != v and best == best):
                best, best_k = v, i * kw + j
    return best, best_k


def launch(thread, total, dtype, *args, order=None):
    """Run ``thread(idx, ...)`` for every idx in [0, total), in ``order`` (default: launch
    order), writing each result into a flat output; every index is written exactly once."""
    out = np.full(total, np.nan, dtype)
    written = np.zeros(total, np.int64)
    for idx in (range(total) if order is None else order):
        out[idx] = thread(int(idx), *args)
        written[idx] += 1
    assert (written == 1).all()
    return out


def launch_both_orders(thread, total, dtype, *args):
    """The emulated kernel in launch order and in a shuffled thread order: bit-identical."""
    first = launch(thread, total, dtype, *args)
    order = np.random.default_rng(total).permutation(total)
    shuffled = launch(thread, total, dtype, *args, order=order)
    assert first.tobytes() == shuffled.tobytes(), "result depends on the thread order"
    return first


def emulate_col2im(cols, H, W, kh, kw, sh, sw, ph, pw, dh, dw):
    n, ho, wo, _, _, c = cols.shape
    T = cols.dtype.type
    flat = launch_both_orders(col2im_thread, n * H * W * c, cols.dtype, cols.ravel(), T,
                              H, W, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    return flat.reshape(n, H, W, c)


def emulate_maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    n, h, w, c = x.shape
    ho = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    T = x.dtype.type
    flat, args = x.ravel(), (T, h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    pairs = [maxpool_forward_thread(idx, flat, *args) for idx in range(n * ho * wo * c)]
    y = np.array([p[0] for p in pairs], x.dtype).reshape(n, ho, wo, c)
    argmax = np.array([p[1] for p in pairs], np.int32).reshape(n, ho, wo, c)
    return y, argmax


def emulate_pool_backward(dy, argmax, H, W, kh, kw, sh, sw, ph, pw, dh=1, dw=1,
                          count_include_pad=True):
    n, ho, wo, c = dy.shape
    T = dy.dtype.type
    flat = launch_both_orders(
        _pool_backward_thread, n * H * W * c, dy.dtype, dy.ravel(),
        None if argmax is None else argmax.ravel(), T, H, W, c, ho, wo, kh, kw, sh, sw, ph, pw,
        dh, dw, count_include_pad)
    return flat.reshape(n, H, W, c)


# ------------------------------------------------------------------------------ the fake tests

DTYPES = [np.float32, np.float64]
SHAPES = [(2, 5, 6, 2), (1, 7, 4, 3)]

# ((kh, kw), (sh, sw), (ph, pw), (dh, dw))
CONV_CASES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 3), (3, 2), (2, 1), (1, 1)),
    ((3, 2), (1, 2), (2, 0), (2, 1)),
    ((3, 3), (2, 1), (1, 2), (2, 2)),
]

# ((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode); padding at most half the kernel (the
# layers' rule); dilation only for max pooling
POOL_CASES = [
    ((2, 2), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), False),      # overlapping windows with padding
    ((3, 3), (1, 1), (1, 1), (1, 1), False),
    ((2, 3), (1, 2), (1, 1), (1, 1), False),
    ((3, 2), (3, 1), (1, 0), (1, 1), False),
    ((1, 1), (2, 2), (0, 0), (1, 1), False),
    ((3, 3), (2, 2), (1, 1), (1, 1), True),       # ceil_mode: last windows past the padding
    ((2, 3), (3, 2), (1, 0), (1, 1), True),
    ((3, 2), (2, 3), (0, 1), (2, 1), False),      # dilation
    ((2, 3), (1, 2), (1, 1), (2, 2), True),
]
AVG_CASES = [g for g in POOL_CASES if g[3] == (1, 1)]


def _fits(shape, k, s, p, d=(1, 1), ceil_mode=False):
    return all(pool_output_size(shape[a + 1], k[a], s[a], p[a], d[a], ceil_mode) >= 1
               for a in (0, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", CONV_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_col2im_matches_numpy_col2im(shape, geom, dtype):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom
    if not _fits(shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw)):
        pytest.skip("window larger than padded input")
    n, h, w, c = shape
    ho, wo = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    cols = np.random.default_rng(0).standard_normal((n, ho, wo, kh, kw, c)).astype(dtype)
    fake = emulate_col2im(cols, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    expected = col2im(cols, (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    # the same sums in the same (i, j) order: bit-identical to the NumPy path
    np.testing.assert_array_equal(fake, expected.transpose(0, 2, 3, 1))
    # and the adjoint of tests/reference.py's im2col: <im2col(x), cols> == <x, col2im(cols)>
    x = np.random.default_rng(1).standard_normal((n, c, h, w))
    unfolded = ref.im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    lhs = (unfolded.reshape(cols.shape) * cols).sum()
    assert np.isclose(lhs, (x.transpose(0, 2, 3, 1) * fake).sum(),
                      rtol=1e-5 if dtype == np.float32 else 1e-12)


def _pool_input(shape, dtype, ties):
    rng = np.random.default_rng(2)
    if ties:                    # few distinct values: many windows hold several maxima
        return rng.integers(-2, 2, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_maxpool_backward_matches_layer_and_reference(shape, geom, dtype, ties):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode = geom
    if not _fits(shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode):
        pytest.skip("window larger than padded input")
    n, h, w, c = shape
    x = _pool_input(shape, dtype, ties)
    y, argmax = emulate_maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode)
    layer = MaxPool2D((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    y_layer = layer.forward(x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y, y_layer.transpose(0, 2, 3, 1))
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    fake = emulate_pool_backward(dy, argmax, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    dx_layer = layer.backward(dy.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    # same tie rule (first maximum), same windows, same (i, j) order: bit-identical
    np.testing.assert_array_equal(fake, dx_layer)
    dx_ref = ref.maxpool_backward(x.transpose(0, 3, 1, 2).astype(np.float64),
                                  dy.transpose(0, 3, 1, 2).astype(np.float64),
                                  (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    np.testing.assert_allclose(fake, dx_ref.transpose(0, 2, 3, 1),
                               rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", AVG_CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_avgpool_backward_matches_layer_and_reference(shape, geom, dtype, count_include_pad):
    (kh, kw), (sh, sw), (ph, pw), _, ceil_mode = geom
    if not _fits(shape, (kh, kw), (sh, sw), (ph, pw), (1, 1), ceil_mode):
        pytest.skip("window larger than padded input")
    n, h, w, c = shape
    ho = pool_output_size(h, kh, sh, ph, 1, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, 1, ceil_mode)
    x = _pool_input(shape, dtype, False)
    dy = np.random.default_rng(4).standard_normal((n, ho, wo, c)).astype(dtype)
    fake = emulate_pool_backward(dy, None, h, w, kh, kw, sh, sw, ph, pw,
                                 count_include_pad=count_include_pad)
    layer = AvgPool2D((kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    layer.forward(x.transpose(0, 3, 1, 2))
    dx_layer = layer.backward(dy.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    # the layer multiplies dy by 1/divisor, the kernel divides: equal up to rounding
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(fake, dx_layer, **tol)
    dx_ref = ref.avgpool_backward(x.transpose(0, 3, 1, 2).astype(np.float64),
                                  dy.transpose(0, 3, 1, 2).astype(np.float64),
                                  (kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    np.testing.assert_allclose(fake, dx_ref.transpose(0, 2, 3, 1), **tol)


def test_fake_catches_an_order_dependent_kernel():
    """The shuffled-order check has teeth: an emulated scatter-with-atomics col2im (one thread
    per column entry, adding into the image as it runs) gives thread-order-dependent bits."""
    rng = np.random.default_rng(5)
    scale = 10.0 ** rng.integers(-4, 5, (1, 4, 4, 3, 3, 1))   # mixed magnitudes: rounding shows
    cols = (rng.standard_normal((1, 4, 4, 3, 3, 1)) * scale).astype(np.float32)

    def scatter(order):
        x = np.zeros((6, 6), np.float32)
        for idx in order:
            oh, ow, i, j = np.unravel_index(idx, (4, 4, 3, 3))
            x[oh + i, ow + j] = np.float32(x[oh + i, ow + j] + cols.ravel()[idx])
        return x

    total = cols.size
    results = {scatter(np.random.default_rng(s).permutation(total)).tobytes() for s in range(8)}
    assert len(results) > 1
    gathered = {launch(col2im_thread, 36, np.float32, cols.ravel(), np.float32,
                       6, 6, 1, 4, 4, 3, 3, 1, 1, 0, 0, 1, 1,
                       order=np.random.default_rng(s).permutation(36)).tobytes()
                for s in range(8)}
    assert len(gathered) == 1
