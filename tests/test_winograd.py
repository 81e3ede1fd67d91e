"""Conv2D's Winograd F(2x2, 3x3) path: each transform against its adjoint, the layer against the
naive loops in float64, gradient checks, PyTorch parity, the layer contract, its float32 error
against the direct sum (stated beside im2col's), and that it runs only when chosen."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.kernels import winograd
from minicnn.layers import conv as conv_module
from minicnn.layers.base import layer_config, layer_from_config
from minicnn.layers.conv import Conv2D
from minicnn.testing.check_layer import check_layer
from minicnn.testing.gradient_check import gradcheck

pytestmark = pytest.mark.usefixtures("seeded")

# (in, out, keyword arguments, input (N, H, W)): even and odd outputs, padding 0/1/2, 'same',
# a (1, 0) pair, no bias
CONFIGS = [
    (3, 4, {"padding": 1}, (2, 6, 6)),
    (2, 3, {}, (2, 7, 5)),
    (3, 2, {"padding": 2, "bias": False}, (1, 5, 6)),
    (2, 2, {"padding": "same"}, (3, 4, 3)),
    (4, 3, {"padding": (1, 0)}, (2, 5, 8)),
    (2, 3, {"padding": 1}, (2, 1, 2)),
]
IDS = [f"{c}-{o}-" + "-".join(f"{a}{v}" for a, v in kw.items()) + f"-{h}x{w}"
       for c, o, kw, (_, h, w) in CONFIGS]


def make(config):
    c, o, kwargs, (n, h, w) = config
    return Conv2D(c, o, 3, algorithm="winograd", **kwargs), (n, c, h, w)


# =========================================================================== the transforms

@pytest.mark.parametrize("size, pads", [((4, 4), (1, 1, 1, 1)), ((5, 7), (0, 0, 0, 0)),
                                        ((3, 6), (2, 1, 0, 3))])
def test_each_backward_transform_is_the_adjoint_of_its_forward(size, pads, monkeypatch):
    """<L a, b> = <a, L^T b> for the input, output and weight transforms, also when the batch
    runs in chunks of one image."""
    monkeypatch.setattr(winograd, "CHUNK_ELEMENTS", 1)
    (h, w), n, c, o = size, 3, 2, 4
    ho, wo, t, s = winograd.tile_counts(h, w, pads)
    x = randn(n, h, w, c, seed=1)
    v = [randn(n * t * s, c, seed=10 + k) for k in range(16)]
    lhs = sum(np.vdot(p, q) for p, q in zip(winograd.input_transform(x, pads), v))
    rhs = np.vdot(x, winograd.input_transform_grad(v, x.shape, pads))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    m = [randn(n * t * s, o, seed=30 + k) for k in range(16)]
    dy = randn(n, ho, wo, o, seed=2)
    lhs = np.vdot(winograd.output_transform(m, n, ho, wo), dy)
    rhs = sum(np.vdot(p, q) for p, q in zip(m, winograd.output_transform_grad(dy)))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    wt, du = randn(o, c, 3, 3, seed=3), [randn(c, o, seed=50 + k) for k in range(16)]
    lhs = sum(np.vdot(p, q) for p, q in zip(winograd.weight_transform(wt), du))
    assert lhs == pytest.approx(np.vdot(wt, winograd.weight_transform_grad(du)), rel=1e-12)


def test_one_tile_is_the_textbook_formula():
    """y = A^T [(G g G^T) * (B^T d B)] A with Lavin & Gray's matrices, for one 4x4 tile."""
    d, g = randn(4, 4, seed=1), randn(3, 3, seed=2)
    b_t = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
    a_t = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
    big_g = np.array(winograd.G)
    textbook = a_t @ ((big_g @ g @ big_g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    v = winograd.input_transform(d.reshape(1, 4, 4, 1), (0, 0, 0, 0))
    u = winograd.weight_transform(g.reshape(1, 1, 3, 3))
    y = winograd.output_transform(winograd.products(v, u), 1, 2, 2)
    np.testing.assert_allclose(y.reshape(2, 2), textbook, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(textbook, ref.conv2d_forward(d[None, None], g[None, None], None)
                               [0, 0], rtol=1e-12, atol=1e-12)


# =========================================================================== the layer

@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_and_backward_match_naive_loops(config):
    layer, shape = make(config)
    layer.astype(np.float64)
    if layer.bias is not None:
        layer.bias.data[:] = randn(layer.out_channels, seed=3)
    x = randn(*shape, seed=1)
    bias = None if layer.bias is None else layer.bias.data
    y = layer.forward(x)
    want = ref.conv2d_forward(x, layer.weight.data, bias, 1, layer.pads)
    assert y.shape == want.shape == (shape[0],) + layer.output_shape(shape[1:])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    dy = randn(*y.shape, seed=2)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(x, layer.weight.data, dy, 1, layer.pads)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, dw_ref, rtol=1e-12, atol=1e-12)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradcheck(config):
    layer, shape = make(config)
    errors = gradcheck(layer, shape, eps=1e-5, tol=1e-6)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_torch_parity(config, dtype):
    pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch_parity import torch_parity
    layer, shape = make(config)
    pads = layer.pads

    def conv(x, p):
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(x, p["weight"], p.get("bias"))
    torch_parity(layer, conv, randn(*shape, seed=4), dtype=dtype)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=IDS[:3])
def test_check_layer(config):
    layer, shape = make(config)
    check_layer(layer, (4,) + shape[1:])


def test_float32_error_against_the_direct_sum_is_stated():
    """Winograd's float32 error against the float64 direct convolution, beside im2col's, on a
    ref-cnn-sized layer (32 -> 64 channels, 14x14), for the output and both gradients: each
    a few float32 ulps (eps 1.2e-7) of its largest value. Measured (relative to the largest):
    y 2e-7 (im2col 4.5e-7), dx 2.9e-7 (1.7e-7), dW 9.6e-7 (5.5e-7): the products' sums are
    9x shorter, the transforms' (and G's halves) add the rest."""
    x, w, b = randn(8, 32, 14, 14, seed=1), randn(64, 32, 3, 3, seed=2) / 17, randn(64, seed=3)
    dy = randn(8, 64, 14, 14, seed=4)
    exact = ref.conv2d_forward(x, w, b, padding=1)
    exact_dx, exact_dw, _ = ref.conv2d_backward(x, w, dy, 1, (1, 1, 1, 1))
    errors = {}
    for algorithm in ("im2col", "winograd"):
        layer = Conv2D(32, 64, 3, padding=1, algorithm=algorithm)
        layer.weight.data[...], layer.bias.data[...] = w, b
        y = layer.forward(x.astype(np.float32))
        dx = layer.backward(dy.astype(np.float32))
        assert y.dtype == dx.dtype == layer.weight.grad.dtype == np.float32
        for what, got, want in (("y", y, exact), ("dx", dx, exact_dx),
                                ("dW", layer.weight.grad, exact_dw)):
            errors[algorithm, what] = float(np.abs(got - want).max() / np.abs(want).max())
    for what in ("y", "dx", "dW"):
        assert errors["winograd", what] < 2e-6, errors
        assert errors["winograd", what] < 4 * errors["im2col", what], errors


@pytest.mark.parametrize("columns", [conv_module.INFERENCE_COLUMNS, 1])   # 1: a slice a sample
def test_inference_forward_equals_training_forward(columns, monkeypatch):
    monkeypatch.setattr(conv_module, "INFERENCE_COLUMNS", columns)
    for config in CONFIGS:
        layer, shape = make(config)
        x = randn(*shape, seed=5).astype(np.float32)
        y = layer.forward(x)
        with minicnn.no_grad():
            np.testing.assert_allclose(layer.forward(x), y, rtol=1e-6, atol=1e-6)


def test_channels_last_and_nchw_inputs_give_the_same_result():
    layer = Conv2D(3, 4, 3, padding=1, algorithm="winograd").astype(np.float64)
    x = randn(2, 3, 6, 4, seed=1)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(layer.forward(last), y, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.backward(np.ones_like(y)), dx, rtol=1e-13, atol=1e-13)


def test_backward_without_input_grad_still_adds_parameter_gradients():
    layer, shape = make(CONFIGS[0])
    y = layer.forward(randn(*shape, seed=1).astype(np.float32))
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    assert np.abs(layer.weight.grad).max() > 0 and np.abs(layer.bias.grad).max() > 0


# =========================================================================== choosing it

def test_im2col_is_the_default_and_winograd_is_chosen(monkeypatch):
    calls = []
    real = winograd.input_transform
    monkeypatch.setattr(winograd, "input_transform",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = np.zeros((2, 32, 8, 8), np.float32)
    Conv2D(32, 8, 3, padding=1).forward(x)
    assert not calls
    Conv2D(32, 8, 3, padding=1, algorithm="winograd").forward(x)
    assert calls


def test_algorithm_survives_the_config_round_trip_and_may_change_between_steps():
    layer = Conv2D(2, 3, 3, padding=1, algorithm="winograd")
    assert layer_from_config(layer_config(layer)).algorithm == "winograd"
    assert Conv2D(2, 3, 3).config()["algorithm"] == "im2col"
    layer.algorithm = "im2col"
    assert layer.config()["algorithm"] == "im2col"
    strided = Conv2D(2, 3, 3, stride=2)
    assert not strided.winograd_applies and Conv2D(2, 3, 3, padding=1).winograd_applies
    with pytest.raises(ValueError, match="stride"):
        strided.algorithm = "winograd"
    assert strided.algorithm == "im2col"


@pytest.mark.parametrize("make_layer, words", [
    (lambda: Conv2D(4, 4, 3, algorithm="fft"), ("Conv2D", "algorithm", "'fft'", "winograd")),
    (lambda: Conv2D(4, 4, 3, stride=2, algorithm="winograd"), ("Conv2D", "3x3", "stride")),
    (lambda: Conv2D(4, 4, 5, algorithm="winograd"), ("Conv2D", "kernel (5, 5)")),
    (lambda: Conv2D(4, 4, 3, groups=2, algorithm="winograd"), ("Conv2D", "groups 2")),
])
def test_one_line_errors(make_layer, words):
    with pytest.raises(ValueError) as info:
        make_layer()
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_tile_planes_are_sixteen_separate_blocks():
    """One (16, ...) block would be over 32 MiB at realistic sizes, which malloc maps afresh in
    a worker thread at every step (page faults: docs/performance.md); 16 blocks it reuses."""
    x, dy = randn(2, 6, 6, 3, seed=1), randn(2, 6, 6, 4, seed=2)
    for planes in (winograd.input_transform(x, (1, 1, 1, 1)), winograd.output_transform_grad(dy)):
        owners = {id(p.base if p.base is not None else p) for p in planes}
        assert len(planes) == len(owners) == 16
