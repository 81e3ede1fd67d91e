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
accumulating in the kernel's accumulator type ``Acc<T>``: the element type for float and double,
float for ``__half``, rounded to the element type once when written), run in launch order and in
a shuffled order, and compared with minicnn's NumPy paths computed the same way (for float16:
the NumPy layer on the float16 values held in float32, rounded to float16 once) and
tests/reference.py. A test also pins the emulated lines to the CUDA source, so the fake cannot
silently drift from the kernels.
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
        "typedef typename Acc<T>::type A;", "A acc = 0;",
        "for (int i = 0; i < kh; ++i)", "const int th = h + ph - i * dh;",
        "if (th < 0) break;", "if (th % sh != 0) continue;", "if (oh >= Ho) continue;",
        "for (int j = 0; j < kw; ++j)", "const int tw = w + pw - j * dw;",
        "if (tw < 0) break;", "if (tw % sw != 0) continue;", "if (ow >= Wo) continue;",
        "acc += static_cast<A>(cols[((((n * Ho + oh) * Wo + ow) * kh + i) * kw + j) * C + c]);",
        "x[idx] = static_cast<T>(acc);",
    ],
    "maxpool_backward_nhwc": [
        "typedef typename Acc<T>::type A;", "A acc = 0;",
        "const int th = h + ph - i * dh;", "if (th < 0) break;", "if (th % sh != 0) continue;",
        "const int tw = w + pw - j * dw;", "if (tw < 0) break;", "if (tw % sw != 0) continue;",
        "if (argmax[o] == i * kw + j) acc += static_cast<A>(dy[o]);",
        "dx[idx] = static_cast<T>(acc);",
    ],
    "avgpool_backward_nhwc": [
        "typedef typename Acc<T>::type A;", "A acc = 0;",
        "const int th = h + ph - i;", "if (th < 0) break;", "if (th % sh != 0) continue;",
        "const int tw = w + pw - j;", "if (tw < 0) break;", "if (tw % sw != 0) continue;",
        "const int d = avgpool_divisor(oh * sh - ph, ow * sw - pw, H, W, kh, kw,"
        " ph, pw, count_include_pad);",
        "acc += static_cast<A>(dy[((n * Ho + oh) * Wo + ow) * C + c]) / A(d);",
        "dx[idx] = static_cast<T>(acc);",
    ],
    "maxpool_forward_nhwc": [
        "typedef typename Acc<T>::type A;",
        "const int h = h0 + i * dh;", "const int w = w0 + j * dw;",
        "const A v = static_cast<A>(x[((n * H + h) * W + w) * C + c]);",
        "if (best_k < 0 || v > best || (v != v && best == best))", "best_k = i * kw + j;",
        "y[idx] = static_cast<T>(best);",
    ],
    "avgpool_forward_nhwc": [
        "typedef typename Acc<T>::type A;", "A acc = 0;",
        "const int h = h0 + i;", "if (h < 0 || h >= H) continue;",
        "const int w = w0 + j;", "if (w < 0 || w >= W) continue;",
        "acc += static_cast<A>(x[((n * H + h) * W + w) * C + c]);",
        "y[idx] = static_cast<T>(acc / A(avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw,"
        " count_include_pad)));",
    ],
}

# The accumulator type Acc<T> of each element type, which the emulations below sum in.
ACC = {np.dtype(np.float16): np.float32, np.dtype(np.float32): np.float32,
       np.dtype(np.float64): np.float64}
ACC_LINES = {"base": "template <typename T> struct Acc { typedef T type; };",
             "half": "template <> struct Acc<__half> { typedef float type; };"}

# The divisor helper's lines, which avgpool_divisor below copies.
DIVISOR_LINES = [
    "const int h1 = min(h0 + kh, H + ph);", "const int w1 = min(w0 + kw, W + pw);",
    "if (count_include_pad) return (h1 - h0) * (w1 - w0);",
    "return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0));",
]


def test_emulated_accumulator_types_are_the_cuda_sources():
    """float and double sum in themselves, __half in float (the half units only)."""
    half = cuda_kernels.HALF_UNIT_SUFFIX
    for unit, source in cuda_kernels.KERNEL_SOURCES.items():
        source = re.sub(r"\s+", "", source)
        assert re.sub(r"\s+", "", ACC_LINES["base"]) in source, unit
        assert (re.sub(r"\s+", "", ACC_LINES["half"]) in source) == unit.endswith(half), unit
    assert ACC[np.dtype(np.float16)] == np.float32


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
# with the kernel's loops; A is the accumulator type Acc<T> (np.float32 for float16 and
# float32, np.float64 for float64), so the sums round as the GPU's do; ``launch`` stores the
# result into the element type (the kernel's one static_cast<T>). Arrays are flat, as the
# kernel sees them.


def col2im_thread(idx, cols, A, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    t = idx
    c = t % C
    t //= C
    w = t % W
    t //= W
    h = t % H
    n = t // H
    acc = A(0)
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
            acc = A(acc + A(cols[((((n * Ho + oh) * Wo + ow) * kh + i) * kw + j) * C + c]))
    return acc


def avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw, count_include_pad):
    """The kernels' avgpool_divisor (PyTorch's avg_pool2d divisor)."""
    h1 = min(h0 + kh, H + ph)
    w1 = min(w0 + kw, W + pw)
    if count_include_pad:
        return (h1 - h0) * (w1 - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


def _pool_backward_thread(idx, dy, argmax, A, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw,
                          count_include_pad):
    """maxpool_backward_nhwc when argmax is given, else avgpool_backward_nhwc (dh = dw = 1)."""
    t = idx
    c = t % C
    t //= C
    w = t % W
    t //= W
    h = t % H
    n = t // H
    acc = A(0)
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
                acc = A(acc + A(A(dy[o]) / A(d)))
            elif argmax[o] == i * kw + j:
                acc = A(acc + A(dy[o]))
    return acc


def maxpool_forward_thread(idx, x, A, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw):
    """(y, argmax) of one output of maxpool_forward_nhwc: the first maximum wins ties."""
    t = idx
    c = t % C
    t //= C
    ow = t % Wo
    t //= Wo
    oh = t % Ho
    n = t // Ho
    best, best_k = A(-np.inf), -1
    for i in range(kh):
        h = oh * sh - ph + i * dh
        if h < 0 or h >= H:
            continue
        for j in range(kw):
            w = ow * sw - pw + j * dw
            if w < 0 or w >= W:
                continue
            v = A(x[((n * H + h) * W + w) * C + c])
            if best_k < 0 or v > best or (v != v and best == best):
                best, best_k = v, i * kw + j
    return best, best_k


def avgpool_forward_thread(idx, x, A, H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw,
                           count_include_pad):
    """One output of avgpool_forward_nhwc: the window sum in A over its divisor."""
    t = idx
    c = t % C
    t //= C
    ow = t % Wo
    t //= Wo
    oh = t % Ho
    n = t // Ho
    h0, w0 = oh * sh - ph, ow * sw - pw
    acc = A(0)
    for i in range(kh):
        h = h0 + i
        if h < 0 or h >= H:
            continue
        for j in range(kw):
            w = w0 + j
            if w < 0 or w >= W:
                continue
            acc = A(acc + A(x[((n * H + h) * W + w) * C + c]))
    return A(acc / A(avgpool_divisor(h0, w0, H, W, kh, kw, ph, pw, count_include_pad)))


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


def emulate_col2im(cols, H, W, kh, kw, sh, sw, ph, pw, dh, dw, acc=None):
    """col2im_nhwc<T> for T = cols.dtype, summing in ``acc`` (default: its Acc<T>)."""
    n, ho, wo, _, _, c = cols.shape
    A = ACC[cols.dtype] if acc is None else acc
    flat = launch_both_orders(col2im_thread, n * H * W * c, cols.dtype, cols.ravel(), A,
                              H, W, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    return flat.reshape(n, H, W, c)


def emulate_maxpool_forward(x, kh, kw, sh, sw, ph, pw, dh=1, dw=1, ceil_mode=False):
    n, h, w, c = x.shape
    ho = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    flat, args = x.ravel(), (ACC[x.dtype], h, w, c, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    pairs = [maxpool_forward_thread(idx, flat, *args) for idx in range(n * ho * wo * c)]
    y = np.array([p[0] for p in pairs], x.dtype).reshape(n, ho, wo, c)
    argmax = np.array([p[1] for p in pairs], np.int32).reshape(n, ho, wo, c)
    return y, argmax


def emulate_pool_backward(dy, argmax, H, W, kh, kw, sh, sw, ph, pw, dh=1, dw=1,
                          count_include_pad=True):
    n, ho, wo, c = dy.shape
    flat = launch_both_orders(
        _pool_backward_thread, n * H * W * c, dy.dtype, dy.ravel(),
        None if argmax is None else argmax.ravel(), ACC[dy.dtype], H, W, c, ho, wo, kh, kw,
        sh, sw, ph, pw, dh, dw, count_include_pad)
    return flat.reshape(n, H, W, c)


def emulate_avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True):
    n, h, w, c = x.shape
    ho = pool_output_size(h, kh, sh, ph, 1, ceil_mode)
    wo = pool_output_size(w, kw, sw, pw, 1, ceil_mode)
    flat = launch_both_orders(avgpool_forward_thread, n * ho * wo * c, x.dtype, x.ravel(),
                              ACC[x.dtype], h, w, c, ho, wo, kh, kw, sh, sw, ph, pw,
                              count_include_pad)
    return flat.reshape(n, ho, wo, c)


# ------------------------------------------------------------------------------ the fake tests

DTYPES = [np.float16, np.float32, np.float64]
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


def _the_kernels_way(layer_path, dtype, *arrays):
    """``layer_path`` (a NumPy path of minicnn) as the kernel computes for ``dtype``: on the
    arrays held in Acc<dtype> (float16 values in float32), the result rounded to ``dtype``
    once."""
    return layer_path(*(a.astype(ACC[np.dtype(dtype)]) for a in arrays)).astype(dtype)


# float16 results against float64 references: the kernel's one rounding to half (2**-11
# relative, 2**-25 absolute below float16's normal range) on top of float32 sums
HALF_TOL = {"rtol": 2.0 ** -10, "atol": 2.0 ** -24}


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
    assert fake.dtype == dtype
    expected = _the_kernels_way(
        lambda a: col2im(a, (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw)), dtype, cols)
    # the same sums in the same (i, j) order: bit-identical to the NumPy path
    np.testing.assert_array_equal(fake, expected.transpose(0, 2, 3, 1))
    # and the adjoint of tests/reference.py's im2col: <im2col(x), cols> == <x, col2im(cols)>
    x = np.random.default_rng(1).standard_normal((n, c, h, w))
    unfolded = ref.im2col(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    lhs = (unfolded.reshape(cols.shape) * cols.astype(np.float64)).sum()
    products = x.transpose(0, 2, 3, 1) * fake.astype(np.float64)
    if dtype == np.float16:     # each term off by one rounding to half (2**-11 relative)
        assert abs(lhs - products.sum()) <= 2.0 ** -11 * np.abs(products).sum()
    else:
        assert np.isclose(lhs, products.sum(), rtol=1e-5 if dtype == np.float32 else 1e-12)


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
    assert y.dtype == dtype
    layer = MaxPool2D((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    # the maximum is exact in any type: the layer in the element type itself agrees
    y_layer = layer.forward(x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y, y_layer.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, _the_kernels_way(
        lambda a: MaxPool2D((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode).forward(a), dtype,
        x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1))
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    fake = emulate_pool_backward(dy, argmax, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    assert fake.dtype == dtype
    wide = MaxPool2D((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    wide.forward(x.transpose(0, 3, 1, 2).astype(ACC[np.dtype(dtype)]))
    dx_layer = _the_kernels_way(wide.backward, dtype, dy.transpose(0, 3, 1, 2))
    # same tie rule (first maximum), same windows, same (i, j) order: bit-identical
    np.testing.assert_array_equal(fake, dx_layer.transpose(0, 2, 3, 1))
    dx_ref = ref.maxpool_backward(x.transpose(0, 3, 1, 2).astype(np.float64),
                                  dy.transpose(0, 3, 1, 2).astype(np.float64),
                                  (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    tol = HALF_TOL if dtype == np.float16 else {
        "rtol": 1e-6 if dtype == np.float32 else 1e-13, "atol": 1e-6}
    np.testing.assert_allclose(fake, dx_ref.transpose(0, 2, 3, 1), **tol)


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
    assert fake.dtype == dtype
    layer = AvgPool2D((kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    layer.forward(x.transpose(0, 3, 1, 2).astype(ACC[np.dtype(dtype)]))
    dx_layer = _the_kernels_way(layer.backward, dtype,
                                dy.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    # the layer multiplies dy by 1/divisor, the kernel divides: equal up to rounding (for
    # float16, up to the one rounding to half of float32 sums that differ in their last bits)
    tol = HALF_TOL if dtype == np.float16 else {"rtol": 1e-5, "atol": 1e-6} \
        if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(fake, dx_layer, **tol)
    dx_ref = ref.avgpool_backward(x.transpose(0, 3, 1, 2).astype(np.float64),
                                  dy.transpose(0, 3, 1, 2).astype(np.float64),
                                  (kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    np.testing.assert_allclose(fake, dx_ref.transpose(0, 2, 3, 1), **tol)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", AVG_CASES)
def test_fake_avgpool_forward_matches_layer_and_reference(geom, dtype, count_include_pad):
    """avgpool_forward_nhwc sums its window in Acc<T> and rounds once: the layer on the values
    held in Acc<T>, rounded, up to its multiply-by-inverse (one rounding of the result)."""
    (kh, kw), (sh, sw), (ph, pw), _, ceil_mode = geom
    shape = SHAPES[0]
    if not _fits(shape, (kh, kw), (sh, sw), (ph, pw), (1, 1), ceil_mode):
        pytest.skip("window larger than padded input")
    x = _pool_input(shape, dtype, False)
    fake = emulate_avgpool_forward(x, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad)
    assert fake.dtype == dtype
    layer = AvgPool2D((kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad)
    y_layer = _the_kernels_way(layer.forward, dtype, x.transpose(0, 3, 1, 2))
    tol = HALF_TOL if dtype == np.float16 else {"rtol": 1e-6, "atol": 1e-7} \
        if dtype == np.float32 else {"rtol": 1e-14, "atol": 1e-15}
    np.testing.assert_allclose(fake, y_layer.transpose(0, 2, 3, 1), **tol)
    y_ref = ref.avgpool_forward(x.transpose(0, 3, 1, 2).astype(np.float64), (kh, kw), (sh, sw),
                        (ph, pw), ceil_mode, count_include_pad)
    np.testing.assert_allclose(fake, y_ref.transpose(0, 2, 3, 1), **tol)


def test_fake_half_sums_in_float_not_in_half():
    """The float16 checks tell float accumulation from half accumulation: with nine
    contributions per pixel, summing in float16 (as the NumPy float16 col2im does, rounding
    after every add) gives other bits than the kernel's float sum rounded once, which is the
    float32 NumPy path rounded and closer to the exact sum."""
    rng = np.random.default_rng(6)
    cols = rng.standard_normal((2, 6, 6, 3, 3, 2)).astype(np.float16)
    in_float = emulate_col2im(cols, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1)
    in_half = emulate_col2im(cols, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, acc=np.float16)
    numpy_half = col2im(cols, (2, 2, 6, 6), 3, 1, 1).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(in_half, numpy_half)          # NumPy float16 sums in half
    assert (in_float != in_half).any()
    np.testing.assert_array_equal(in_float, _the_kernels_way(
        lambda a: col2im(a, (2, 2, 6, 6), 3, 1, 1), np.float16, cols).transpose(0, 2, 3, 1))
    exact = col2im(cols.astype(np.float64), (2, 2, 6, 6), 3, 1, 1).transpose(0, 2, 3, 1)
    err_float, err_half = np.abs(in_float - exact), np.abs(in_half - exact)
    assert (err_float <= err_half).all() and err_float.sum() < err_half.sum()


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
