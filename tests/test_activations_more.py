"""GELU (exact and tanh), SiLU, ELU, Softplus, ReLU6, Hardswish, PReLU and LogSoftmax, and the
erf they rest on: naive references, float64 gradient checks, PyTorch parity in float32 and
float64, the layer contract, checkpoints, Dense by name, ONNX export, errors; Softmax and
LogSoftmax over the batch axis are never split among threads."""
from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from conftest import randn
from torch_parity import torch_parity

import minicnn
from minicnn.core.special import erf, normal_cdf
from minicnn.layers.activations import ACTIVATIONS, LogSoftmax, Softmax, get_activation
from minicnn.layers.dense import Dense
from minicnn.layers.piecewise_activations import Hardswish, PReLU, ReLU6
from minicnn.layers.smooth_activations import ELU, GELU, SiLU, Softplus
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck
from minicnn.training import parallel

TOL, EPS = 1e-6, 1e-5


def _layers():
    """(id, factory, naive reference of y, naive reference of dy/dx, PyTorch function)."""
    return [
        ("gelu", lambda: GELU(), ref.gelu, ref.gelu_grad, lambda F, x, p: F.gelu(x)),
        ("gelu_tanh", lambda: GELU("tanh"), ref.gelu_tanh, ref.gelu_tanh_grad,
         lambda F, x, p: F.gelu(x, approximate="tanh")),
        ("silu", SiLU, ref.silu, ref.silu_grad, lambda F, x, p: F.silu(x)),
        ("elu", ELU, ref.elu, ref.elu_grad, lambda F, x, p: F.elu(x)),
        ("elu_alpha", lambda: ELU(0.4), lambda v: ref.elu(v, 0.4),
         lambda v: ref.elu_grad(v, 0.4), lambda F, x, p: F.elu(x, alpha=0.4)),
        ("softplus", Softplus, ref.softplus, ref.softplus_grad, lambda F, x, p: F.softplus(x)),
        ("softplus_beta", lambda: Softplus(beta=2.5, threshold=3.0),
         lambda v: ref.softplus(v, 2.5, 3.0), lambda v: ref.softplus_grad(v, 2.5, 3.0),
         lambda F, x, p: F.softplus(x, beta=2.5, threshold=3.0)),
        ("relu6", ReLU6, ref.relu6, ref.relu6_grad, lambda F, x, p: F.relu6(x)),
        ("hardswish", Hardswish, ref.hardswish, ref.hardswish_grad,
         lambda F, x, p: F.hardswish(x)),
        ("prelu", PReLU, lambda v: ref.prelu(v, 0.25), lambda v: ref.prelu_grad(v, 0.25),
         lambda F, x, p: F.prelu(x, p["weight"])),
    ]


LAYERS = _layers()
IDS = [entry[0] for entry in LAYERS]


def _x(shape, seed=0, scale=3.0):
    """Values over the interesting range (kinks at 0, +-3, 6; Softplus's threshold)."""
    return randn(*shape, seed=seed) * scale


# --------------------------------------------------------------------------- erf

@pytest.mark.parametrize("dtype,ulps", [(np.float64, 4), (np.float32, 3)])
def test_erf_matches_math_erf_to_rounding(dtype, ulps):
    grid = np.linspace(-10, 10, 200001)
    extremes = np.array([0.0, -0.0, 5e-324, 1e-300, -1e-30, 1e-8, 0.5, 1.0, 2.0, 3.9, 4.0, 5.9,
                         6.0, 26.0, 1e30, -1e30, np.finfo(dtype).max, np.inf, -np.inf])
    x = np.concatenate([grid, extremes]).astype(dtype)
    got = erf(x)
    assert got.dtype == dtype and got.shape == x.shape
    want = np.array([math.erf(float(v)) for v in x])
    ulp = np.maximum(np.spacing(np.abs(want).astype(dtype)).astype(np.float64),
                     np.finfo(dtype).smallest_subnormal)
    worst = float((np.abs(got.astype(np.float64) - want) / ulp).max())
    assert worst <= ulps, worst
    assert np.signbit(erf(np.array([-0.0], dtype=dtype)))[0]
    assert np.isnan(erf(np.array([np.nan], dtype=dtype)))[0]


def test_erf_keeps_shape_and_layout_and_refuses_integers():
    x = randn(3, 4, 5).transpose(2, 0, 1)                  # not contiguous
    np.testing.assert_allclose(erf(x), np.vectorize(math.erf)(x), rtol=1e-15, atol=0)
    with pytest.raises(TypeError, match="erf: expected a floating-point array"):
        erf(np.arange(3))


def test_normal_cdf_float32_to_rounding_also_in_the_lower_tail():
    x = np.concatenate([np.linspace(-14, 8, 100001), [0.0, 40.0, -40.0, 1e30, -1e30]])
    x = x.astype(np.float32)
    got = normal_cdf(x)
    want = np.array([0.5 * math.erfc(-float(v) / math.sqrt(2)) for v in x])
    assert got.dtype == np.float32
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    normal = want > 1e-35                   # float32's tail below that is subnormal
    assert float((np.abs(got.astype(np.float64) - want) / ulp)[normal].max()) <= 9
    assert got[-1] == 0 and got[-2] == 1


def test_normal_cdf_float64():
    x = np.linspace(-8, 8, 20001)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    # relative 2e-13: 1 + erf(x / sqrt 2) cancels a little between -2.8 and -1 (reference: its
    # own rounding of x / sqrt 2 costs up to 1e-14 at -8)
    np.testing.assert_allclose(normal_cdf(x), want, rtol=2e-13, atol=0)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    tail = np.array([-9.0, -20.0, -37.5])
    exact = np.array([float(mpmath.ncdf(mpmath.mpf(v))) for v in tail])
    np.testing.assert_allclose(normal_cdf(tail), exact, rtol=1e-14, atol=0)
    assert np.isnan(normal_cdf(np.array([np.nan])))[0]
    with pytest.raises(TypeError, match="normal_cdf: expected a floating-point array"):
        normal_cdf(np.arange(2))


# --------------------------------------------------------------------------- references

@pytest.mark.parametrize("name,make,forward,grad,torch_fn", LAYERS, ids=IDS)
def test_matches_naive_reference(name, make, forward, grad, torch_fn):
    layer = make().astype(np.float64)
    x = _x((3, 4, 5))
    y = layer.forward(x)
    dy = randn(*x.shape, seed=1)
    dx = layer.backward(dy)
    np.testing.assert_allclose(y, forward(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dx, grad(x) * dy, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name,make,forward,grad,torch_fn", LAYERS, ids=IDS)
def test_float32_stays_float32(name, make, forward, grad, torch_fn):
    layer = make()
    x = _x((2, 3, 4), seed=2).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32


def test_blockwise_path_equals_whole_array_path():
    """Arrays past one block run block by block; the result is the same as element by element."""
    x = _x((3, 70000), seed=3)
    for layer in (GELU(), GELU("tanh"), SiLU(), ELU(), Softplus()):
        layer.astype(np.float64)
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(x))
        head = layer.forward(x[:, :100].copy())
        np.testing.assert_array_equal(y[:, :100], head)
        assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_written_in_place_equal_small_whole_arrays(dtype):
    """Past one block the results are written straight into the output blocks
    (``blockwise(..., into=n)``): forward (with and without grad) and backward equal, bit for
    bit, the same layer run on pieces small enough to be computed whole."""
    x = _x((3, 70000), seed=4).astype(dtype)
    dy = randn(3, 70000, seed=5).astype(dtype)
    pieces = [slice(start, start + 20000) for start in range(0, 70000, 20000)]  # < BLOCK
    for layer in (GELU(), GELU("tanh"), SiLU(), ELU(), ELU(0.5), Softplus(2.0, 3.0)):
        layer.astype(dtype)
        with minicnn.no_grad():
            inference = layer.forward(x)
        y, dx = layer.forward(x), layer.backward(dy)
        for s in pieces:
            np.testing.assert_array_equal(inference[:, s], layer.forward(x[:, s].copy()))
            np.testing.assert_array_equal(y[:, s], layer.forward(x[:, s].copy()))
            np.testing.assert_array_equal(dx[:, s], layer.backward(dy[:, s].copy()))
        assert y.dtype == dx.dtype == inference.dtype == dtype


def test_log_softmax_matches_reference_and_is_stable():
    x = _x((3, 5, 2))
    for axis in (1, 2, -1):
        np.testing.assert_allclose(LogSoftmax(axis).forward(x), ref.log_softmax(x, axis),
                                   rtol=1e-13, atol=1e-14)
    huge = np.array([[1e4, 0.0, -1e4]], dtype=np.float32)
    y = LogSoftmax().forward(huge)
    assert np.isfinite(y[0, :2]).all() and y[0, 0] == 0 and y[0, 1] == -1e4


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("name,make,forward,grad,torch_fn", LAYERS, ids=IDS)
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 4)])
def test_gradcheck(name, make, forward, grad, torch_fn, shape):
    errors = gradcheck(make(), shape, eps=EPS, tol=TOL)
    assert errors and max(errors.values()) < TOL, errors


@pytest.mark.parametrize("shape,channels", [((2, 3), 3), ((2, 3, 4, 4), 3), ((2, 5), 1)])
def test_gradcheck_prelu_per_channel(shape, channels):
    layer = PReLU(channels, init=0.1)
    layer.weight.data[...] = np.linspace(-0.5, 0.7, channels)
    errors = gradcheck(layer, shape, eps=EPS, tol=TOL)
    assert "weight" in " ".join(errors) and max(errors.values()) < TOL, errors


@pytest.mark.parametrize("axis,shape", [(1, (3, 4)), (-1, (2, 3, 4)), (0, (3, 4)), (2, (2, 3, 4))])
def test_gradcheck_log_softmax(axis, shape):
    errors = gradcheck(LogSoftmax(axis), shape, eps=EPS, tol=TOL)
    assert max(errors.values()) < TOL, errors


# --------------------------------------------------------------------------- PyTorch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,make,forward,grad,torch_fn", LAYERS, ids=IDS)
def test_torch_parity(name, make, forward, grad, torch_fn, dtype):
    pytest.importorskip("torch")
    import torch.nn.functional as F
    for shape in ((4, 6), (2, 3, 5, 5)):
        torch_parity(make(), lambda x, p: torch_fn(F, x, p), _x(shape, seed=4), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_torch_parity_prelu(dtype, shape, channels):
    pytest.importorskip("torch")
    import torch.nn.functional as F
    layer = PReLU(channels)
    layer.weight.data[...] = np.linspace(-0.3, 0.6, channels)
    torch_parity(layer, lambda x, p: F.prelu(x, p["weight"]), _x(shape, seed=5), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_torch_parity_log_softmax(dtype, axis):
    pytest.importorskip("torch")
    import torch
    torch_parity(LogSoftmax(axis), lambda x, p: torch.log_softmax(x, dim=axis),
                 _x((3, 4, 5), seed=6), dtype)


# --------------------------------------------------------------------------- contract

@pytest.mark.parametrize("name,make,forward,grad,torch_fn", LAYERS, ids=IDS)
def test_check_layer(name, make, forward, grad, torch_fn):
    check_layer(make(), (4, 3, 5, 5))


def test_check_layer_prelu_per_channel_and_log_softmax():
    check_layer(PReLU(3), (4, 3, 5, 5))
    check_layer(PReLU(3), (4, 3))
    check_layer(LogSoftmax(), (4, 6))


def test_checkpoint_round_trip(tmp_path):
    model = minicnn.Sequential([
        minicnn.layers.Conv2D(2, 3, 3, padding=1), PReLU(3, init=0.1), GELU("tanh"),
        Softplus(beta=2.0, threshold=5.0), ELU(0.5), SiLU(), Hardswish(), ReLU6(), GELU(),
        minicnn.layers.Flatten(), Dense(3 * 5 * 5, 4, activation="prelu"),
        LogSoftmax(axis=1)], input_shape=(2, 5, 5))
    model.layers[1].weight.data[...] = [0.1, -0.2, 0.3]
    model.layers[10].activation.weight.data[...] = 0.4
    x = _x((3, 2, 5, 5), seed=7).astype(np.float32)
    want = minicnn_output(model, x)
    path = minicnn.save(model, tmp_path / "m.npz")
    loaded = minicnn.load(path)
    np.testing.assert_array_equal(minicnn_output(loaded, x), want)
    assert [type(a) for a in loaded.layers] == [type(a) for a in model.layers]
    assert loaded.layers[3].config() == {"beta": 2.0, "threshold": 5.0}
    assert loaded.layers[10].activation.weight.data[0] == np.float32(0.4)


def minicnn_output(model, x):
    with minicnn.no_grad():
        return model.forward(x, training=False)


def test_summary_shapes():
    model = minicnn.Sequential([PReLU(2), GELU(), minicnn.layers.Flatten(), Dense(18, 4),
                                LogSoftmax()], input_shape=(2, 3, 3))
    text = model.summary()
    for row in ("prelu_1 (PReLU)            (N, 2, 3, 3)                 2",
                "logsoftmax_1 (LogSoftmax)  (N, 4)                       0"):
        assert row in text


# --------------------------------------------------------------------------- Dense by name

@pytest.mark.parametrize("name", ["gelu", "silu", "elu", "softplus", "relu6", "hardswish",
                                  "prelu", "log_softmax"])
def test_dense_activation_by_name(name, tmp_path):
    assert name in ACTIVATIONS and type(get_activation(name)) is ACTIVATIONS[name]
    layer = Dense(5, 3, activation=name)
    errors = gradcheck(layer, (4, 5), eps=EPS, tol=TOL)
    assert max(errors.values()) < TOL
    names = dict(layer.named_parameters())
    assert ("activation.weight" in names) == (name == "prelu")
    model = minicnn.Sequential([layer], input_shape=(5,))
    x = _x((2, 5), seed=8).astype(np.float32)
    loaded = minicnn.load(minicnn.save(model, tmp_path / "d.npz"))
    np.testing.assert_array_equal(minicnn_output(loaded, x), minicnn_output(model, x))


def test_dense_prelu_weight_is_trained():
    layer = Dense(4, 3, activation="prelu")
    x = _x((6, 4), seed=9)
    layer.astype(np.float64).forward(x)
    layer.backward(np.ones((6, 3)))
    assert layer.activation.weight.grad[0] != 0
    assert any(p is layer.activation.weight for p in layer.parameters())


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("make,match", [
    (lambda: GELU("erf"), "GELU: approximate must be 'none' or 'tanh', got 'erf'"),
    (lambda: ELU(float("nan")), "ELU: alpha must be a finite number"),
    (lambda: Softplus(beta=0), "Softplus: beta must be non-zero"),
    (lambda: Softplus(threshold="big"), "Softplus: threshold must be a finite number"),
    (lambda: PReLU(0), "PReLU: num_parameters must be a positive int, got 0"),
    (lambda: PReLU(2.5), "PReLU: num_parameters must be a positive int"),
    (lambda: PReLU(init="x"), "PReLU: init must be a number"),
    (lambda: LogSoftmax(axis=1.5), "LogSoftmax: axis must be an int"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"PReLU.*expected an input \(N, 3, \.\.\.\) with 3 "
                                         r"channels on axis 1, got shape \(2, 4\)"):
        PReLU(3).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        minicnn.Sequential([PReLU(3)], input_shape=(4, 2, 2))
    with pytest.raises(TypeError, match="GELU.*expected a floating-point array"):
        GELU().forward(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="LogSoftmax.*expected an input with an axis 2"):
        LogSoftmax(axis=2).forward(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="PReLU.*expected float32 input"):
        PReLU().forward(np.zeros((2, 2), np.float64))
    for bad in (np.full((2, 2), np.nan, np.float32),):
        with pytest.raises(ValueError, match="SiLU.*NaN or inf"):
            SiLU().forward(bad)


# --------------------------------------------------------------------------- batch axis

@pytest.mark.parametrize("cls", [Softmax, LogSoftmax])
def test_batch_axis_is_never_split(cls, monkeypatch):
    assert cls(axis=0).per_sample is False and cls(axis=-2).per_sample is False
    assert cls(axis=1).per_sample is True
    monkeypatch.setenv("MINICNN_WORKERS", "2")
    model = minicnn.Sequential([cls(axis=0)], input_shape=(5,))
    x = _x((64, 5), seed=10).astype(np.float32)
    assert parallel.split_count(model, x, None) == 1
    y = minicnn_output(model, x)
    p = np.exp(y) if cls is LogSoftmax else y
    np.testing.assert_allclose(p.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(y, cls(axis=0).forward(x), rtol=1e-6)


def test_per_sample_layers_split_and_agree(monkeypatch):
    monkeypatch.setenv("MINICNN_WORKERS", "2")
    model = minicnn.Sequential([PReLU(5), GELU(), LogSoftmax(axis=1)], input_shape=(5,))
    x = _x((64, 5), seed=11).astype(np.float32)
    if minicnn.kernels.blas.can_set_threads():
        assert parallel.split_count(model, x, None) == 2
    y = model.forward(x)
    model.zero_grad()
    model.backward(np.ones_like(y))
    whole = [layer for layer in (PReLU(5), GELU(), LogSoftmax(axis=1))]
    v = x
    for layer in whole:
        v = layer.forward(v)
    np.testing.assert_allclose(y, v, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- ONNX

ONNX_CASES = [
    (GELU(), (3, 4, 4)), (GELU("tanh"), (3, 4, 4)), (SiLU(), (6,)), (ELU(0.7), (3, 4, 4)),
    (Softplus(), (6,)), (Softplus(beta=2.0, threshold=1.5), (3, 4, 4)), (ReLU6(), (3, 4, 4)),
    (Hardswish(), (3, 4, 4)), (PReLU(), (3, 4, 4)), (PReLU(3), (3, 4, 4)), (PReLU(6), (6,)),
    (LogSoftmax(), (6,)), (LogSoftmax(axis=-1), (3, 4, 5)),
]


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("layer,shape", ONNX_CASES,
                         ids=[f"{type(e[0]).__name__}{i}" for i, e in enumerate(ONNX_CASES)])
def test_onnx_export_matches_onnxruntime(layer, shape, opset, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    if isinstance(layer, PReLU):
        layer.weight.data[...] = np.linspace(-0.4, 0.5, layer.num_parameters)
    model = minicnn.Sequential([layer], input_shape=shape)
    export_and_compare(model, tmp_path, opset=opset)


def test_onnx_dense_with_prelu_and_operators(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare
    model = minicnn.Sequential([Dense(4, 3, activation="prelu"), Dense(3, 2, activation="gelu")],
                               input_shape=(4,))
    export_and_compare(model, tmp_path, opset=13)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert {"PRelu", "Erf", "Gemm"} <= ops
    export_and_compare(model, tmp_path, name="m20", opset=20)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m20.onnx")).graph.node}
    assert "Gelu" in ops and "Erf" not in ops
