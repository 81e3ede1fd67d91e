"""float16 (``__half``) in the CUDA kernels of minicnn.kernels.cuda, and the wrappers'
choice of instantiation.

* On the host, NumPy standing in for CuPy (no GPU needed): each dtype (float16, float32,
  float64) launches its own instantiation from its own unit (float16 from ``conv_half`` /
  ``pool_half``) with every float argument of that dtype, and any other dtype is refused
  before a launch, in one line naming the kernel and the dtype.
* On a GPU (skipped without one): the ``__half`` kernels are the float32 kernels on the same
  float16 values rounded to half once (bit for bit: they sum in float); Conv2D, MaxPool2D and
  AvgPool2D run forward and backward in float16 on CuPy, float16 all through, within float16
  tolerance of float32 (pooling exactly the float32 result rounded); a 2-step
  ``fit(..., precision="fp16")`` on CuPy launches every kernel on float16.

The NVRTC compile of the ``__half`` units and the check that their PTX computes in float are in
tests/test_cuda_kernels.py; their gathers are emulated in tests/test_cuda_determinism.py.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from test_cuda_kernels import (
    CONV_CASES,
    POOL_CASES,
    _assert_bit_identical,
    _gpu_cupy,
    ref_avgpool,
    ref_col2im,
    ref_im2col,
)

from minicnn.kernels import cuda as cuda_kernels


@pytest.fixture(scope="module")
def cp():
    """CuPy on a GPU, or skip (tests/conftest.py marks the tests taking it as gpu)."""
    return _gpu_cupy()

# --------------------------------------------------------------------------
# The wrappers on the host, NumPy standing in for CuPy (no GPU needed)
# --------------------------------------------------------------------------


class _RecordingModule:
    """Stands in for a cupy.RawModule: get_function returns a kernel that records its launch
    (unit, name expression, argument dtypes) instead of running."""

    def __init__(self, unit, launches):
        self.unit, self.launches = unit, launches

    def get_function(self, expr):
        assert expr in cuda_kernels.KERNEL_NAME_EXPRESSIONS[self.unit], (self.unit, expr)

        def kernel(grid, block, args):
            self.launches.append((self.unit, expr, [getattr(a, "dtype", None) for a in args]))
        return kernel


@pytest.fixture
def host_wrappers(monkeypatch):
    """The wrappers with NumPy as their array module and recording modules: returns the list
    of launches."""
    launches = []
    fake_cupy = types.SimpleNamespace(ndarray=np.ndarray, empty=np.empty,
                                      ascontiguousarray=np.ascontiguousarray)
    monkeypatch.setattr(cuda_kernels, "_cupy", lambda: fake_cupy)
    monkeypatch.setattr(cuda_kernels, "_module", lambda unit: _RecordingModule(unit, launches))
    cuda_kernels._kernel.cache_clear()
    yield launches
    cuda_kernels._kernel.cache_clear()


def _call_every_wrapper(dtype):
    """Call the six wrappers on small arrays of ``dtype``; return their outputs."""
    x = np.zeros((1, 4, 4, 2), dtype)
    cols = cuda_kernels.im2col_nhwc(x, 3, 3, 1, 1, 1, 1, 1, 1)
    back = cuda_kernels.col2im_nhwc(cols, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1)
    y, arg = cuda_kernels.maxpool_forward_nhwc(x, 2, 2, 2, 2, 0, 0)
    dx = cuda_kernels.maxpool_backward_nhwc(y, arg, 4, 4, 2, 2, 2, 2, 0, 0)
    ya = cuda_kernels.avgpool_forward_nhwc(x, 2, 2, 2, 2, 0, 0)
    dxa = cuda_kernels.avgpool_backward_nhwc(ya, 4, 4, 2, 2, 2, 2, 0, 0)
    return cols, back, y, dx, ya, dxa


@pytest.mark.parametrize("dtype, ctype", [(np.float16, "__half"), (np.float32, "float"),
                                          (np.float64, "double")])
def test_wrappers_launch_the_instantiation_of_the_dtype(host_wrappers, dtype, ctype):
    outputs = _call_every_wrapper(dtype)
    assert all(o.dtype == dtype for o in outputs)      # float16 stays float16: no upcast
    names = ["im2col_nhwc", "col2im_nhwc", "maxpool_forward_nhwc", "maxpool_backward_nhwc",
             "avgpool_forward_nhwc", "avgpool_backward_nhwc"]
    assert [expr for _, expr, _ in host_wrappers] == [f"{n}<{ctype}>" for n in names]
    for unit, expr, arg_dtypes in host_wrappers:
        base = "conv" if "col" in expr else "pool"
        assert unit == (base + "_half" if dtype == np.float16 else base), expr
        floats = [d for d in arg_dtypes if d is not None and d.kind == "f"]
        assert floats and all(d == dtype for d in floats), (expr, arg_dtypes)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.uint8, np.longdouble])
def test_wrappers_refuse_other_dtypes_naming_kernel_and_dtype(host_wrappers, dtype):
    x = np.zeros((1, 4, 4, 2), dtype)
    calls = {
        "im2col_nhwc": lambda: cuda_kernels.im2col_nhwc(x, 3, 3, 1, 1, 1, 1, 1, 1),
        "col2im_nhwc": lambda: cuda_kernels.col2im_nhwc(
            np.zeros((1, 4, 4, 3, 3, 2), dtype), 4, 4, 3, 3, 1, 1, 1, 1, 1, 1),
        "maxpool_forward_nhwc": lambda: cuda_kernels.maxpool_forward_nhwc(x, 2, 2, 2, 2, 0, 0),
        "maxpool_backward_nhwc": lambda: cuda_kernels.maxpool_backward_nhwc(
            np.zeros((1, 2, 2, 2), dtype), np.zeros((1, 2, 2, 2), np.int32),
            4, 4, 2, 2, 2, 2, 0, 0),
        "avgpool_forward_nhwc": lambda: cuda_kernels.avgpool_forward_nhwc(x, 2, 2, 2, 2, 0, 0),
        "avgpool_backward_nhwc": lambda: cuda_kernels.avgpool_backward_nhwc(
            np.zeros((1, 2, 2, 2), dtype), 4, 4, 2, 2, 2, 2, 0, 0),
    }
    for kernel, call in calls.items():
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{kernel}: ") and str(np.dtype(dtype)) in message, message
        assert "float16, float32 or float64" in message and "\n" not in message
    assert host_wrappers == []                          # refused before any launch


# --------------------------------------------------------------------------
# float16 (__half) on the GPU
# --------------------------------------------------------------------------


def _halves(rng, shape):
    """Standard normal values rounded to float16, as (float16 array, the same in float32)."""
    h = rng.standard_normal(shape).astype(np.float16)
    return h, h.astype(np.float32)


@pytest.mark.parametrize("geom", CONV_CASES)
def test_half_conv_kernels_are_the_float32_kernels_rounded_once(cp, geom):
    """On float16-valued inputs the __half im2col copies them exactly and the __half col2im
    is the float32 col2im (the same float sums in the same order) rounded to half once."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom
    n, h, w, c = 2, 9, 8, 3
    rng = np.random.default_rng(9)
    x16, x32 = _halves(rng, (n, h, w, c))
    cols = cuda_kernels.im2col_nhwc(cp.asarray(x16), kh, kw, sh, sw, ph, pw, dh, dw)
    assert cols.dtype == np.float16
    np.testing.assert_array_equal(cp.asnumpy(cols), ref_im2col(x16, kh, kw, sh, sw, ph, pw,
                                                                dh, dw))
    g16, g32 = _halves(rng, cols.shape)
    back = cuda_kernels.col2im_nhwc(cp.asarray(g16), h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    back32 = cuda_kernels.col2im_nhwc(cp.asarray(g32), h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    assert back.dtype == np.float16
    assert cp.asnumpy(back).tobytes() == cp.asnumpy(back32).astype(np.float16).tobytes()
    ref = ref_col2im(g32.astype(np.float64), h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    np.testing.assert_allclose(cp.asnumpy(back), ref, rtol=2.0 ** -10, atol=2.0 ** -24)
    _assert_bit_identical(back, cuda_kernels.col2im_nhwc(cp.asarray(g16), h, w, kh, kw,
                                                         sh, sw, ph, pw, dh, dw))


@pytest.mark.parametrize("geom", POOL_CASES)
def test_half_pool_kernels_are_the_float32_kernels_rounded_once(cp, geom):
    (kh, kw), (sh, sw), (ph, pw) = geom
    n, h, w, c = 2, 9, 8, 3
    rng = np.random.default_rng(10)
    x16, x32 = _halves(rng, (n, h, w, c))
    y, arg = cuda_kernels.maxpool_forward_nhwc(cp.asarray(x16), kh, kw, sh, sw, ph, pw)
    y32, arg32 = cuda_kernels.maxpool_forward_nhwc(cp.asarray(x32), kh, kw, sh, sw, ph, pw)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(cp.asnumpy(y), cp.asnumpy(y32).astype(np.float16))
    np.testing.assert_array_equal(cp.asnumpy(arg), cp.asnumpy(arg32))
    dy16, dy32 = _halves(rng, y.shape)
    dx = cuda_kernels.maxpool_backward_nhwc(cp.asarray(dy16), arg, h, w, kh, kw, sh, sw, ph, pw)
    dx32 = cuda_kernels.maxpool_backward_nhwc(cp.asarray(dy32), arg32, h, w, kh, kw, sh, sw,
                                              ph, pw)
    assert dx.dtype == np.float16
    assert cp.asnumpy(dx).tobytes() == cp.asnumpy(dx32).astype(np.float16).tobytes()
    ya = cuda_kernels.avgpool_forward_nhwc(cp.asarray(x16), kh, kw, sh, sw, ph, pw)
    ya32 = cuda_kernels.avgpool_forward_nhwc(cp.asarray(x32), kh, kw, sh, sw, ph, pw)
    assert cp.asnumpy(ya).tobytes() == cp.asnumpy(ya32).astype(np.float16).tobytes()
    np.testing.assert_allclose(cp.asnumpy(ya), ref_avgpool(x32.astype(np.float64), kh, kw,
                                                           sh, sw, ph, pw),
                               rtol=2.0 ** -10, atol=2.0 ** -24)
    da = cuda_kernels.avgpool_backward_nhwc(cp.asarray(dy16), h, w, kh, kw, sh, sw, ph, pw)
    da32 = cuda_kernels.avgpool_backward_nhwc(cp.asarray(dy32), h, w, kh, kw, sh, sw, ph, pw)
    assert cp.asnumpy(da).tobytes() == cp.asnumpy(da32).astype(np.float16).tobytes()
    _assert_bit_identical(da, cuda_kernels.avgpool_backward_nhwc(cp.asarray(dy16), h, w,
                                                                 kh, kw, sh, sw, ph, pw))


def _to_half(layer):
    """A float16 copy of ``layer`` (parameters and their gradients), as mixed precision's
    working copy is made."""
    import copy
    half = copy.deepcopy(layer)
    for p in half.parameters():
        p.data, p.grad = p.data.astype(np.float16), p.grad.astype(np.float16)
    return half


def _half_close(got, want, what):
    """Within float16 tolerance: the largest error at most 8 float16 ulps (2**-10 each) of
    the largest magnitude (cuBLAS rounds float16 products and sums)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= 8 * 2.0 ** -10 * scale, f"{what}: max error {err:.3g}, scale {scale:.3g}"


HALF_LAYER_CASES = [
    ("conv", dict(in_channels=3, out_channels=8, kernel_size=3, stride=1, padding=1)),
    ("conv", dict(in_channels=3, out_channels=4, kernel_size=(2, 3), stride=2, padding=1,
                  dilation=(2, 1))),
    ("max", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
]


@pytest.mark.parametrize("kind, kwargs", HALF_LAYER_CASES)
def test_half_layers_on_cupy_match_float32(cp, kind, kwargs):
    """Conv2D / MaxPool2D / AvgPool2D forward and backward in float16 on CuPy: float16 all
    through (no upcast), against the same layer in float32 on CuPy on the same float16-valued
    input, weights and gradient; pooling is exactly the float32 result rounded to half."""
    import minicnn
    from minicnn.layers.conv import Conv2D
    from minicnn.layers.pooling import AvgPool2D, MaxPool2D
    minicnn.manual_seed(0)
    layer = {"conv": Conv2D, "max": MaxPool2D, "avg": AvgPool2D}[kind](**kwargs)
    c = kwargs.get("in_channels", 3)
    rng = np.random.default_rng(11)
    x16, x32 = _halves(rng, (4, c, 11, 10))
    for p in layer.parameters():             # float16-valued float32 weights
        p.data = p.data.astype(np.float16).astype(np.float32)
    layer.to("cupy")
    half = _to_half(layer)
    y32 = layer.forward(cp.asarray(x32))
    y16 = half.forward(cp.asarray(x16))
    assert y16.dtype == np.float16 and y16.shape == y32.shape
    dy16, dy32 = _halves(rng, y32.shape)
    dx32 = layer.backward(cp.asarray(dy32))
    dx16 = half.backward(cp.asarray(dy16))
    assert dx16.dtype == np.float16
    if kind == "conv":
        _half_close(cp.asnumpy(y16), cp.asnumpy(y32), "forward")
        _half_close(cp.asnumpy(dx16), cp.asnumpy(dx32), "input gradient")
        for p16, p32 in zip(half.parameters(), layer.parameters()):
            assert p16.grad.dtype == np.float16
            _half_close(cp.asnumpy(p16.grad), cp.asnumpy(p32.grad), "parameter gradient")
    else:
        assert cp.asnumpy(y16).tobytes() == cp.asnumpy(y32).astype(np.float16).tobytes()
        assert cp.asnumpy(dx16).tobytes() == cp.asnumpy(dx32).astype(np.float16).tobytes()


def test_fp16_fit_on_cupy_runs_two_steps_in_half(cp, monkeypatch):
    """fit(..., precision="fp16") of a CNN with Conv2D, MaxPool2D and AvgPool2D on CuPy: two
    steps, every CUDA kernel launched on float16 (float32 in the fp32 fit), the float32 masters
    on the GPU updated, by updates close to the fp32 fit's."""
    import minicnn
    from minicnn.core import backend
    from minicnn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from minicnn.training import SGD, fit

    seen = []
    for name in ("im2col_nhwc", "col2im_nhwc", "maxpool_forward_nhwc", "maxpool_backward_nhwc",
                 "avgpool_forward_nhwc", "avgpool_backward_nhwc"):
        original = getattr(cuda_kernels, name)

        def recorder(first, *args, _name=name, _original=original, **kwargs):
            seen.append((_name, first.dtype))
            return _original(first, *args, **kwargs)
        monkeypatch.setattr(cuda_kernels, name, recorder)

    rng = np.random.default_rng(12)
    x = rng.standard_normal((32, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    results = {}
    backend.set_backend("cupy")
    try:
        for precision in ("fp32", "fp16"):
            minicnn.manual_seed(0)
            model = minicnn.Sequential(
                [Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Conv2D(4, 4, 3),
                 AvgPool2D(2), Flatten(), Dense(16, 3)], input_shape=(1, 12, 12))
            model.to("cupy")
            before = [backend.to_numpy(p.data).copy() for p in model.parameters()]
            seen.clear()
            history = fit(model, (x, y), 1, SGD(model.parameters(), lr=0.05), batch_size=16,
                          seed=0, progress=False, verbose=False, precision=precision)
            after = [p.data for p in model.parameters()]
            assert all(isinstance(a, cp.ndarray) and a.dtype == np.float32 for a in after)
            results[precision] = [backend.to_numpy(a) - b for a, b in zip(after, before)]
            assert all((u != 0).any() for u in results[precision])     # every weight moved
            kernel_dtypes = {d for _, d in seen}
            assert {n for n, _ in seen} >= {"im2col_nhwc", "col2im_nhwc",
                                            "maxpool_forward_nhwc", "maxpool_backward_nhwc",
                                            "avgpool_forward_nhwc", "avgpool_backward_nhwc"}
            assert kernel_dtypes == {np.dtype(np.float16 if precision == "fp16"
                                              else np.float32)}, seen
            record = history[-1]
            assert record["step"] == 2 and np.isfinite(record["train_loss"]), record
            if precision == "fp16":
                assert record["skipped_steps"] == 0 and record["loss_scale"] == 2.0 ** 16
    finally:
        backend.set_backend("numpy")
    # the two steps' updates in fp16 against fp32: the same fit on NumPy gives 2e-4 to 5e-4
    # (about one float16 rounding, 2**-11); 1e-2 leaves room for cuBLAS's float16 GEMMs, while
    # a kernel reading or writing wrong halves is off by order 1
    for u16, u32 in zip(results["fp16"], results["fp32"]):
        assert np.linalg.norm(u16 - u32) / np.linalg.norm(u32) < 1e-2
