"""ConvTranspose2D: the scatter definition in ``reference.py`` (forward and every gradient),
float64 gradient checks over strides, padding, output_padding, dilation, groups and
non-square kernels, PyTorch parity (float32 and float64), the symmetry with Conv2D (each
layer's forward is the other's input gradient, bit for bit), PyTorch's initialisation, the
layer contract, checkpoints, summaries, ONNX export against ONNX Runtime, one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from conftest import gpu_unavailable_reason, randn

import minicnn
from minicnn.layers import Conv2D, Dense, Flatten, ReLU
from minicnn.layers.conv_transpose import ConvTranspose2D
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

EPS, TOL = 1e-5, 1e-6          # as tests/test_layers.py (see the comment there)

# (in, out, kernel, stride, padding, output_padding, groups, dilation, input H x W)
CONFIGS = [
    (3, 4, 3, 1, 0, 0, 1, 1, (4, 5)),
    (3, 4, 3, 1, 1, 0, 1, 1, (5, 4)),
    (2, 3, 2, 2, 0, 0, 1, 1, (3, 4)),
    (4, 6, 3, 2, 1, 1, 2, 1, (3, 3)),
    (2, 2, 4, 2, 1, 0, 1, 1, (3, 2)),
    (2, 3, (2, 3), (3, 1), (0, 1), (2, 0), 1, (1, 2), (2, 3)),
    (3, 2, 3, 3, 2, (1, 2), 1, 1, (3, 2)),
    (4, 4, 3, 1, 2, 1, 4, 3, (4, 3)),          # output_padding >= stride (dilation 3)
    (6, 4, (1, 3), (2, 2), (0, 1), 1, 2, (1, 2), (2, 4)),
    (4, 2, 3, 2, 0, (1, 0), 2, 2, (2, 3)),
]
IDS = [f"cfg{i}" for i in range(len(CONFIGS))]

pytestmark = pytest.mark.usefixtures("seeded")


def make(cfg, bias=True):
    c, o, k, s, p, op, g, d, _ = cfg
    return ConvTranspose2D(c, o, k, stride=s, padding=p, output_padding=op, groups=g,
                           bias=bias, dilation=d)


def input_shape(cfg, n=2):
    return (n, cfg[0], *cfg[8])


def options(cfg):
    _, _, _, s, p, op, g, d, _ = cfg
    return {"stride": s, "padding": p, "output_padding": op, "groups": g, "dilation": d}


# =========================================================================== definition

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_the_scatter_definition(cfg):
    layer = make(cfg).astype(np.float64)
    x = randn(*input_shape(cfg), seed=1)
    y = layer.forward(x)
    opts = options(cfg)
    want = ref.conv_transpose2d_forward(x, layer.weight.data, layer.bias.data, opts["stride"],
                                        opts["padding"], opts["output_padding"],
                                        opts["dilation"], opts["groups"])
    assert y.shape == want.shape == (2, *layer.output_shape(input_shape(cfg)[1:]))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    dy = randn(*y.shape, seed=2)
    dx = layer.backward(dy)
    want_dx, want_dw, want_db = ref.conv_transpose2d_backward(
        x, layer.weight.data, dy, opts["stride"], opts["padding"], opts["dilation"],
        opts["groups"])
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, want_db, rtol=1e-12, atol=1e-12)


def test_output_padding_rows_hold_the_bias_when_no_window_reaches_them():
    layer = ConvTranspose2D(2, 3, 2, stride=3, output_padding=2).astype(np.float64)
    y = layer.forward(randn(1, 2, 2, 2))
    assert y.shape == (1, 3, 7, 7)           # (2 - 1)*3 + 2 + 2
    np.testing.assert_array_equal(y[0, :, 5:, :], np.broadcast_to(
        layer.bias.data[:, None, None], (3, 2, 7)))
    np.testing.assert_array_equal(y[0, :, 2, :], np.broadcast_to(
        layer.bias.data[:, None], (3, 7)))   # the gap between windows: bias alone too


def test_output_padding_rows_are_reached_by_windows_within_padding():
    layer = ConvTranspose2D(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False)
    layer.astype(np.float64)
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 1] = 1.0                      # the last pixel's window reaches row/column 3
    y = layer.forward(x)
    assert y.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(y[0, 0, 3, 3], layer.weight.data[0, 0, 2, 2])


# =========================================================================== gradients

@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(cfg, bias):
    layer = make(cfg, bias)
    errors = gradcheck(layer, input_shape(cfg), eps=EPS, tol=TOL)
    assert set(errors) == {"input", "weight"} | ({"bias"} if bias else set())
    assert max(errors.values()) < TOL, errors
    assert layer.dtype == np.float32


def test_input_grad_false_skips_dx_and_still_adds_the_parameter_gradients():
    cfg = CONFIGS[3]
    layer = make(cfg).astype(np.float64)
    x = randn(*input_shape(cfg), seed=3)
    dy = randn(*layer.forward(x).shape, seed=4)
    layer.backward(dy)
    dw, db = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer.zero_grad()
    layer.forward(x)
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(layer.weight.grad, dw)
    np.testing.assert_array_equal(layer.bias.grad, db)


def test_float32_in_float32_out():
    layer = ConvTranspose2D(3, 4, 3, stride=2, padding=1, output_padding=1)
    x = randn(2, 3, 5, 5, dtype=np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32 and y.shape == (2, 4, 10, 10)
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert layer.weight.grad.dtype == layer.bias.grad.dtype == np.float32


def test_batch_slices_give_the_whole_batch_result(monkeypatch):
    """The host path runs a few samples at a time; slices of one sample change nothing."""
    import minicnn.layers.conv_transpose as module

    cfg = CONFIGS[3]
    layer = make(cfg).astype(np.float64)
    x = randn(*input_shape(cfg, n=5), seed=5)
    y = layer.forward(x)
    dy = randn(*y.shape, seed=6)
    dx = layer.backward(dy)
    grads = layer.weight.grad.copy(), layer.bias.grad.copy()
    monkeypatch.setattr(module, "OUTPUT_ELEMENTS", 1)
    monkeypatch.setattr(module, "COLUMN_ELEMENTS", 1)
    layer.zero_grad()
    np.testing.assert_array_equal(layer.forward(x), y)
    np.testing.assert_allclose(layer.backward(dy), dx, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.weight.grad, grads[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_gpu_algorithm_on_the_host_gives_the_phase_sums(cfg, monkeypatch):
    """The GPU's forward (col2im_matmul for every stride), run on NumPy, equals the host's
    phase-by-phase sums."""
    layer = make(cfg).astype(np.float64)
    x = randn(*input_shape(cfg, n=3), seed=14)
    y = layer.forward(x)
    monkeypatch.setattr(ConvTranspose2D, "_scatters_by_phase", lambda self, x: False)
    np.testing.assert_allclose(layer.forward(x), y, rtol=1e-13, atol=1e-13)


def test_arrays_decide(monkeypatch):
    """Once made, the layer computes with its arrays' module, never the global one."""
    from minicnn.core import backend

    class NoGlobalModule:
        def __getattr__(self, name):
            raise AssertionError(f"the global backend module was used (xp.{name})")

    layers = [make(cfg) for cfg in CONFIGS]
    monkeypatch.setattr(backend, "xp", NoGlobalModule())
    for cfg, layer in zip(CONFIGS, layers):
        x = randn(*input_shape(cfg), seed=15, dtype=np.float32)
        y = layer.forward(x)
        assert layer.backward(np.ones_like(y)).shape == x.shape
        with minicnn.no_grad():
            np.testing.assert_array_equal(layer.forward(x), y)


# =========================================================================== PyTorch

def _torch_fn(cfg):
    import torch.nn.functional as F

    opts = options(cfg)
    return lambda x, p: F.conv_transpose2d(x, p["weight"], p.get("bias"), **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_torch(cfg, dtype):
    pytest.importorskip("torch")
    from torch_parity import torch_parity

    torch_parity(make(cfg), _torch_fn(cfg), randn(*input_shape(cfg, n=3), seed=7), dtype=dtype)
    torch_parity(make(cfg, bias=False), _torch_fn(cfg), randn(*input_shape(cfg), seed=8),
                 dtype=dtype)


def test_initialisation_is_torchs():
    torch = pytest.importorskip("torch")

    layer = ConvTranspose2D(16, 8, 3, groups=2)
    assert layer.weight.shape == (16, 4, 3, 3) and layer.bias.shape == (8,)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(16, 4, 3, 3))
    assert fan_in == 4 * 9
    bound = 1 / math.sqrt(fan_in)                # kaiming_uniform(a=sqrt(5)): 1/sqrt(fan_in)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= bound
    assert np.abs(layer.weight.data).max() > 0.95 * bound
    assert abs(float(layer.weight.data.std()) - bound / math.sqrt(3)) < 0.1 * bound
    for init in ("he", "glorot"):
        other = ConvTranspose2D(16, 8, 3, groups=2, init=init)
        assert other.weight.shape == (16, 4, 3, 3) and not other.bias.data.any()


# =========================================================================== symmetry

SYMMETRY = [(3, 4, 3, 1, 1, 0, 1, 1, (5, 4)), (3, 4, 3, 1, 0, 0, 1, 1, (4, 5)),
            (2, 3, 4, 2, 1, 1, 1, 1, (3, 4)), (3, 2, (2, 3), (3, 2), (1, 0), 0, 1, (2, 1), (3, 3)),
            (4, 6, 3, 2, 1, 1, 2, 1, (3, 3)), (6, 4, 2, 2, 0, 0, 2, 1, (3, 2))]


@pytest.mark.parametrize("cfg", SYMMETRY, ids=[f"sym{i}" for i in range(len(SYMMETRY))])
def test_forward_and_backward_are_conv2ds_backward_and_forward(cfg):
    """ConvTranspose2D(C, O, ...) and Conv2D(O, C, ...) holding the same weight (C, O/G, kh,
    kw): each one's forward is, bit for bit, the other one's input gradient."""
    c, o, k, s, p, op, g, d, _ = cfg
    transposed = make(cfg, bias=False).astype(np.float64)
    conv = Conv2D(o, c, k, stride=s, padding=p, dilation=d, groups=g, bias=False)
    conv.astype(np.float64)
    conv.weight.data = transposed.weight.data.copy()
    x = randn(*input_shape(cfg), seed=9)
    y = transposed.forward(x)
    assert conv.forward(randn(*y.shape, seed=10)).shape == x.shape
    np.testing.assert_array_equal(conv.backward(x), y)
    dy = randn(*y.shape, seed=11)
    np.testing.assert_array_equal(transposed.backward(dy), conv.forward(dy))
    conv.zero_grad()
    conv.backward(x)                  # Conv2D's dW for input dy and output gradient x
    np.testing.assert_allclose(transposed.weight.grad, conv.weight.grad, rtol=1e-13,
                               atol=1e-13)


# =========================================================================== model use

@pytest.mark.parametrize("cfg", CONFIGS[:6:2] + CONFIGS[7:], ids=str)
def test_layer_contract(cfg):
    check_layer(make(cfg), input_shape(cfg, n=4))


def _model():
    return minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(),
                               ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1,
                                               groups=2, dilation=2),
                               ReLU(), ConvTranspose2D(6, 2, 2, stride=2, bias=False),
                               Flatten(), Dense(2 * 20 * 20, 3)], input_shape=(2, 4, 4))


def test_summary_shapes_and_parameter_counts():
    text = _model().summary(print_fn=None)
    for name, shape, count in [("convtranspose2d_1 (ConvTranspose2D)", "(N, 6, 10, 10)",
                                4 * 3 * 9 + 6),
                               ("convtranspose2d_2 (ConvTranspose2D)", "(N, 2, 20, 20)",
                                6 * 2 * 4)]:
        row = next(line for line in text.splitlines() if line.startswith(name))
        assert shape in row and row.split()[-1] == str(count), row


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    x = randn(2, 2, 4, 4, dtype=np.float32)
    model.forward(x, training=True)
    minicnn.save(model, tmp_path / "m.npz")
    loaded = minicnn.load(tmp_path / "m.npz")
    assert [layer.config() for layer in loaded.layers] == \
        [layer.config() for layer in model.layers]
    assert loaded.layers[2].output_padding == (1, 1) and loaded.layers[2].groups == 2
    np.testing.assert_array_equal(loaded.forward(x, training=False),
                                  model.forward(x, training=False))


def test_onnx_export_matches_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from test_onnx import export_and_compare

    model = _model()
    export_and_compare(model, tmp_path, batch=3)
    nodes = [n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node
             if n.op_type == "ConvTranspose"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert len(nodes) == 2 and len(nodes[1].input) == 2          # the second has no bias
    assert attrs == {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                     "dilations": [2, 2], "group": 2, "output_padding": [1, 1]}


@pytest.mark.parametrize("cfg", [CONFIGS[5], CONFIGS[6], CONFIGS[8]], ids=str)
def test_onnx_export_of_asymmetric_options(cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_onnx import export_and_compare

    export_and_compare(minicnn.Sequential([make(cfg)], input_shape=input_shape(cfg)[1:]),
                       tmp_path)


@pytest.mark.gpu
def test_cupy_matches_numpy():
    assert gpu_unavailable_reason() is None
    for cfg in CONFIGS:
        layer = make(cfg).astype(np.float64)
        x = randn(*input_shape(cfg), seed=12)
        y = layer.forward(x)
        dy = randn(*y.shape, seed=13)
        dx = layer.backward(dy)
        on_gpu = make(cfg).astype(np.float64)
        for p, q in zip(on_gpu.parameters(), layer.parameters()):
            p.data = q.data.copy()
        on_gpu.to("cupy")
        cp = minicnn.backend.get_module("cupy")
        y_gpu = on_gpu.forward(cp.asarray(x))
        np.testing.assert_allclose(minicnn.backend.to_numpy(y_gpu), y, rtol=1e-12, atol=1e-12)
        dx_gpu = on_gpu.backward(cp.asarray(dy))
        np.testing.assert_allclose(minicnn.backend.to_numpy(dx_gpu), dx, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(minicnn.backend.to_numpy(on_gpu.weight.grad),
                                   layer.weight.grad, rtol=1e-12, atol=1e-12)


# =========================================================================== errors

@pytest.mark.parametrize("args,kwargs,kind,needle", [
    ((4, 6, 3), {"groups": 4}, ValueError, "groups must divide"),
    ((4, 6, 3), {"groups": 3}, ValueError, "groups must divide"),
    ((0, 6, 3), {}, ValueError, "in_channels"),
    ((4, 6, 3), {"groups": 0}, ValueError, "groups"),
    ((4, 6, 3), {"stride": 2, "output_padding": 2}, ValueError, "output_padding"),
    ((4, 6, 3), {"output_padding": 1}, ValueError, "smaller than the stride or the dilation"),
    ((4, 6, 3), {"stride": (2, 1), "output_padding": (1, 1)}, ValueError, "output_padding"),
    ((4, 6, 3), {"padding": -1}, ValueError, "padding"),
    ((4, 6, 0), {}, ValueError, "kernel_size"),
    ((4, 6, 3), {"stride": 1.5}, TypeError, "stride"),
    ((4, 6, 3), {"bias": 1}, TypeError, "bias"),
    ((4, 6, 3), {"init": "normal"}, ValueError, "normal"),
])
def test_rejects_bad_arguments(args, kwargs, kind, needle):
    with pytest.raises(kind) as info:
        ConvTranspose2D(*args, **kwargs)
    message = str(info.value)
    assert message.startswith("ConvTranspose2D: ") and needle in message
    assert "\n" not in message


def test_rejects_bad_inputs_in_one_line():
    layer = ConvTranspose2D(3, 2, 3, padding=2)
    for x, needle in [(randn(2, 4, 5, 5, dtype=np.float32), "expected 3 input channels"),
                      (randn(2, 3, 5, dtype=np.float32), "expected a 4-D input"),
                      (randn(2, 3, 1, 1, dtype=np.float32), "empty"),
                      (np.ones((2, 3, 4, 4), np.int64), "floating-point")]:
        with pytest.raises((ValueError, TypeError)) as info:
            layer.forward(x)
        message = str(info.value)
        assert message.startswith("ConvTranspose2D(") and needle in message, message
        assert "\n" not in message
    with pytest.raises(ValueError, match=r"expected input shape \(3, H, W\)"):
        layer.output_shape((4, 5, 5))
    with pytest.raises(ValueError, match="backward called before forward"):
        ConvTranspose2D(3, 2, 3).backward(randn(1, 2, 3, 3, dtype=np.float32))
