"""Every layer: gradient checks (float64, worst relative error < 1e-6) over randomised
configurations, and forward/backward against the naive loop definitions in ``reference.py``."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.layers import (
    Add,
    AvgPool2D,
    BatchNorm2D,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from minicnn.testing.gradient_check import GradientCheckError, gradcheck

SEEDS = list(range(16))
TOL = 1e-6
# Central-difference step (gradcheck's default, given explicitly). For the piecewise-linear
# layers (Conv2D, pooling, ReLU, Dense) the central difference is exact up to rounding, and
# rounding noise grows as 1/eps: with eps = 1e-6 it already reaches ~5e-7 relative on
# small-gradient elements of a 2x3x9x5 convolution, and fails outright on ordinary sizes (see
# test_gradcheck_defaults_pass_on_ordinary_sizes). With 1e-5 it is ~1e-8 here, while the
# truncation error of the smooth layers, ~eps^2 f'''(x)/6, stays ~1e-11. Standard normal inputs
# keep kinks and max-pool ties further than 1e-5 from every checked element (fixed seeds).
EPS = 1e-5


def check(layer, shapes, **kwargs):
    """gradcheck with the suite's tolerance; also assert on the returned errors."""
    kwargs.setdefault("eps", EPS)
    errors = gradcheck(layer, shapes, tol=TOL, **kwargs)
    assert errors and max(errors.values()) < TOL, errors
    return errors


def conv_from_config(cfg, bias=True):
    return Conv2D(cfg["c"], cfg["o"], cfg["kernel_size"], stride=cfg["stride"],
                  padding=cfg["padding"], dilation=cfg["dilation"], bias=bias)


def conv_args(cfg):
    return {k: cfg[k] for k in ("stride", "padding", "dilation")}


def x_shape(cfg):
    return (cfg["n"], cfg["c"], cfg["h"], cfg["w"])


pytestmark = pytest.mark.usefixtures("seeded")


# =========================================================================== gradient checks

@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_conv2d(seed):
    cfg = ref.conv_config(seed)
    layer = conv_from_config(cfg, bias=seed % 4 != 3)
    errors = check(layer, x_shape(cfg), seed=seed)
    assert set(errors) == {"input", "weight"} | ({"bias"} if layer.bias is not None else set())
    assert layer.dtype == np.float32            # gradcheck restores the layer's dtype


def test_gradcheck_conv2d_same_padding_and_dilation():
    check(Conv2D(2, 3, (3, 5), padding="same", dilation=(2, 1)), (2, 2, 7, 6))


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "sigmoid", "tanh",
                                        "softmax", "linear", LeakyReLU(0.2)])
@pytest.mark.parametrize("batch", [1, 4])
def test_gradcheck_dense(activation, batch):
    layer = Dense(5, 3, activation=activation)
    layer.bias.data[:] = randn(3, seed=1)
    check(layer, (batch, 5), seed=batch)


def test_gradcheck_dense_without_bias():
    errors = check(Dense(4, 2, bias=False), (3, 4))
    assert set(errors) == {"input", "weight"}


def test_pool_seed_list_covers_the_required_configurations():
    configs = [ref.pool_config(s) for s in SEEDS]
    assert {v for c in configs for v in c["stride"]} == {1, 2, 3}
    assert {v for c in configs for v in c["padding"]} == {0, 1}      # at most half the kernel
    assert any(c["kernel_size"][0] != c["kernel_size"][1] for c in configs)
    assert any(s < k for c in configs for s, k in zip(c["stride"], c["kernel_size"]))  # overlap
    assert {c["n"] for c in configs} == {1, 2} and {c["c"] for c in configs} == {1, 3}


@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_maxpool(seed):
    cfg = ref.pool_config(seed)
    check(MaxPool2D(cfg["kernel_size"], cfg["stride"], cfg["padding"]), x_shape(cfg), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_avgpool(seed):
    cfg = ref.pool_config(seed)
    check(AvgPool2D(cfg["kernel_size"], cfg["stride"], cfg["padding"]), x_shape(cfg), seed=seed)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5)])
def test_gradcheck_global_avg_pool(shape):
    check(GlobalAvgPool2D(), shape)


@pytest.mark.parametrize("layer_cls", [ReLU, LeakyReLU, Sigmoid, Tanh, Identity])
@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (3, 4), (2, 3, 4, 5)])
def test_gradcheck_activations(layer_cls, shape):
    check(layer_cls(), shape)


def test_gradcheck_leaky_relu_custom_slope():
    check(LeakyReLU(0.3), (2, 3, 4, 4))


@pytest.mark.parametrize("axis,shape", [(1, (4, 6)), (1, (1, 3)), (1, (2, 3, 2, 2)),
                                        (-1, (2, 3, 2, 4))])
def test_gradcheck_softmax(axis, shape):
    check(Softmax(axis=axis), shape)


@pytest.mark.parametrize("shape", [(1, 3), (2, 3, 4, 5), (2, 1, 3)])
def test_gradcheck_flatten(shape):
    check(Flatten(), shape)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_gradcheck_dropout_training(p):
    layer = Dropout(p)
    errors = check(layer, (3, 2, 4, 4))
    assert errors["input"] < TOL


def test_gradcheck_dropout_eval():
    check(Dropout(0.5).eval(), (2, 3, 4))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (4, 1, 1, 1)])
def test_gradcheck_batchnorm_training(shape):
    layer = BatchNorm2D(shape[1])
    layer.weight.data[:] = 1 + 0.5 * randn(shape[1], seed=1)
    layer.bias.data[:] = randn(shape[1], seed=2)
    check(layer, shape)


def test_gradcheck_batchnorm_eval():
    layer = BatchNorm2D(3)
    layer.weight.data[:] = 1 + 0.5 * randn(3, seed=1)
    layer.bias.data[:] = randn(3, seed=2)
    for k in range(3):                      # non-trivial running statistics
        layer.forward((2 + randn(4, 3, 5, 5, seed=k) * 3).astype(np.float32))
    layer.eval()
    check(layer, (2, 3, 4, 5))


@pytest.mark.parametrize("count", [2, 3])
def test_gradcheck_add(count):
    errors = check(Add(), [(2, 3, 4, 4)] * count)
    assert set(errors) == {f"input{i}" for i in range(count)}


@pytest.mark.parametrize("axis,shapes", [
    (1, [(2, 3, 4, 4), (2, 1, 4, 4)]),
    (1, [(1, 2, 3, 3), (1, 4, 3, 3), (1, 1, 3, 3)]),
    (-1, [(2, 3, 4, 2), (2, 3, 4, 5)]),
    (1, [(3, 4), (3, 2)]),
])
def test_gradcheck_concatenate(axis, shapes):
    check(Concatenate(axis=axis), shapes)


@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2D(3, 8, 3, padding=1), (2, 3, 16, 16)),
    (lambda: Dense(256, 64), (8, 256)),
    (lambda: MaxPool2D(2), (4, 8, 16, 16)),
    (lambda: BatchNorm2D(8), (4, 8, 8, 8)),
], ids=["conv", "dense", "maxpool", "batchnorm"])
def test_gradcheck_defaults_pass_on_ordinary_sizes(make, shape):
    """minicnn.gradcheck(layer, shape) with its default eps and tol, as the README shows it, must
    not fail on correct layers of everyday size. With the former default eps = 1e-6, rounding
    noise alone gave 5.7e-7 (conv), 9.6e-7 (dense), 2.1e-6 (maxpool) and 4.0e-6 (batchnorm)."""
    errors = gradcheck(make(), shape)
    assert max(errors.values()) < 1e-6


def test_gradcheck_detects_a_wrong_backward():
    class BrokenTanh(Tanh):
        def derivative(self, x, y, grad_out):
            return grad_out * (1 - y)          # wrong: should be 1 - y*y
    with pytest.raises(GradientCheckError, match="BrokenTanh"):
        gradcheck(BrokenTanh(), (2, 5))


def test_gradcheck_detects_a_wrong_parameter_gradient():
    class BrokenDense(Dense):
        def backward(self, grad_out):
            dx = super().backward(grad_out)
            self.bias.grad *= 2
            return dx
    with pytest.raises(GradientCheckError, match="bias"):
        gradcheck(BrokenDense(3, 2), (2, 3))


# =========================================================================== Conv2D vs loops

def conv64(cfg, seed, bias=True):
    layer = conv_from_config(cfg, bias=bias).astype(np.float64)
    layer.weight.data[:] = randn(*layer.weight.shape, seed=seed + 1)
    if layer.bias is not None:
        layer.bias.data[:] = randn(cfg["o"], seed=seed + 2)
    return layer


@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_forward_matches_naive_loops(seed):
    cfg = ref.conv_config(seed)
    layer = conv64(cfg, seed, bias=seed % 3 != 0)
    x = randn(*x_shape(cfg), seed=seed)
    b = None if layer.bias is None else layer.bias.data
    expected = ref.conv2d_forward(x, layer.weight.data, b, **conv_args(cfg))
    y = layer.forward(x)
    assert y.shape == expected.shape == (cfg["n"], cfg["o"]) + layer.output_shape(x.shape[1:])[1:]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_backward_matches_naive_loops(seed):
    cfg = ref.conv_config(seed)
    layer = conv64(cfg, seed)
    x = randn(*x_shape(cfg), seed=seed)
    y = layer.forward(x)
    dy = randn(*y.shape, seed=seed + 3)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward(x, layer.weight.data, dy, **conv_args(cfg))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_conv2d_channels_last_input_gives_identical_results(seed):
    cfg = ref.conv_config(seed)
    x = randn(*x_shape(cfg), seed=seed)
    x_cl = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    a, b = conv64(cfg, seed), conv64(cfg, seed)
    ya, yb = a.forward(x), b.forward(x_cl)
    np.testing.assert_array_equal(ya, yb)
    dy = randn(*ya.shape, seed=seed + 5)
    dy_cl = dy.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy_cl))
    np.testing.assert_array_equal(a.weight.grad, b.weight.grad)
    np.testing.assert_array_equal(a.bias.grad, b.bias.grad)


def test_conv2d_repeated_steps_reuse_buffers_correctly():
    """Forward/backward several times (the column buffer is reused, and overwritten by backward),
    with changing batch sizes: results stay exact and parameter gradients accumulate."""
    cfg = ref.conv_config(5)
    layer = conv64(cfg, 5)
    w = layer.weight.data.copy()
    total_dw = np.zeros_like(w)
    for step, n in enumerate([2, 2, 1, 3]):
        x = randn(n, cfg["c"], cfg["h"], cfg["w"], seed=50 + step)
        y = layer.forward(x)
        np.testing.assert_allclose(y, ref.conv2d_forward(x, w, layer.bias.data, **conv_args(cfg)),
                                   rtol=1e-12, atol=1e-12)
        dy = randn(*y.shape, seed=60 + step)
        dx = layer.backward(dy)
        dx_ref, dw_ref, _ = ref.conv2d_backward(x, w, dy, **conv_args(cfg))
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
        total_dw += dw_ref
        np.testing.assert_allclose(layer.weight.grad, total_dw, rtol=1e-12, atol=1e-12)


def test_conv2d_float32_close_to_float64_reference():
    cfg = ref.conv_config(7)
    layer = conv_from_config(cfg)
    x = randn(*x_shape(cfg), seed=7).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    expected = ref.conv2d_forward(x.astype(np.float64), layer.weight.data.astype(np.float64),
                                  layer.bias.data.astype(np.float64), **conv_args(cfg))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_conv2d_same_padding_keeps_size():
    layer = Conv2D(2, 3, 5, padding="same")
    assert layer.padding == (2, 2)
    assert layer.forward(randn(1, 2, 6, 7).astype(np.float32)).shape == (1, 3, 6, 7)
    assert Conv2D(1, 1, (3, 5), padding="same", dilation=2).padding == (2, 4)
    with pytest.raises(ValueError, match="stride 1"):
        Conv2D(1, 1, 3, stride=2, padding="same")
    even = Conv2D(1, 1, 2, padding="same")                # one more at the bottom/right
    assert even.pads == (0, 0, 1, 1)
    assert even.forward(randn(1, 1, 5, 4).astype(np.float32)).shape == (1, 1, 5, 4)


def test_conv2d_weight_layout_is_pytorch_order():
    layer = Conv2D(3, 5, (2, 4))
    assert layer.weight.shape == (5, 3, 2, 4) and layer.bias.shape == (5,)
    assert layer.output_shape((3, 10, 10)) == (5, 9, 7)


def test_conv2d_optional_parity_with_torch():
    torch = pytest.importorskip("torch")
    for seed in SEEDS[:6]:
        cfg = ref.conv_config(seed)
        layer = conv64(cfg, seed)
        x = randn(*x_shape(cfg), seed=seed)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(layer.weight.data, requires_grad=True)
        bt = torch.tensor(layer.bias.data, requires_grad=True)
        yt = torch.nn.functional.conv2d(xt, wt, bt, **conv_args(cfg))
        y = layer.forward(x)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        dy = randn(*y.shape, seed=seed + 9)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.weight.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.bias.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


# =========================================================================== pooling vs loops

NAMED_POOLS = {
    "overlapping_3x3_stride2": {"kernel_size": (3, 3), "stride": (2, 2), "padding": (0, 0)},
    "padding1": {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)},
    "non_square": {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0)},
    "default_stride": {"kernel_size": (2, 2), "stride": None, "padding": (0, 0)},
}
POOL_CASES = [pytest.param(dict(NAMED_POOLS[k], n=2, c=3, h=7, w=8), id=k) for k in NAMED_POOLS]
POOL_CASES += [pytest.param(ref.pool_config(s), id=f"seed{s}") for s in SEEDS]


def pool_geometry(cfg):
    return {k: cfg[k] for k in ("kernel_size", "stride", "padding")}


@pytest.mark.parametrize("cfg", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_matches_naive_loops(kind, cfg):
    layer_cls, fwd, bwd = {"max": (MaxPool2D, ref.maxpool_forward, ref.maxpool_backward),
                           "avg": (AvgPool2D, ref.avgpool_forward, ref.avgpool_backward)}[kind]
    layer = layer_cls(**pool_geometry(cfg))
    x = randn(*x_shape(cfg), seed=cfg["h"] * 31 + cfg["w"])
    y = layer.forward(x)
    expected = fwd(x, **pool_geometry(cfg))
    assert y.shape == expected.shape == (cfg["n"],) + layer.output_shape(x.shape[1:])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    dy = randn(*y.shape, seed=4)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, bwd(x, dy, **pool_geometry(cfg)), rtol=1e-12, atol=1e-14)
    # the same input and gradient stored channels-last give bit-identical results
    x_cl = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    dy_cl = dy.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(layer.forward(x_cl), y)
    np.testing.assert_array_equal(layer.backward(dy_cl), dx)


@pytest.mark.parametrize("geometry", list(NAMED_POOLS.values()), ids=list(NAMED_POOLS))
def test_maxpool_ties_send_gradient_to_first_maximum(geometry):
    x = np.zeros((1, 2, 7, 8))                        # every element ties
    x[0, 1, 2:5, 3:6] = 1.0                           # and a plateau of ties at a higher level
    layer = MaxPool2D(**geometry)
    y = layer.forward(x)
    dy = randn(*y.shape, seed=0)
    np.testing.assert_array_equal(layer.backward(dy),
                                  ref.maxpool_backward(x, dy, **geometry))


def test_maxpool_padding_never_wins():
    x = -1.0 - np.abs(randn(2, 2, 5, 5))              # all negative: a zero pad would win
    layer = MaxPool2D(3, 2, 1)
    y = layer.forward(x)
    assert (y < -1.0 + 1e-12).all()
    np.testing.assert_array_equal(y, ref.maxpool_forward(x, 3, 2, 1))


def test_avgpool_counts_padding_as_zeros():
    layer = AvgPool2D(3, 1, 1)
    y = layer.forward(np.ones((1, 1, 3, 3)))
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9],
                                         [4 / 9, 6 / 9, 4 / 9]])


def test_pool_padding_larger_than_half_kernel_is_rejected():
    with pytest.raises(ValueError, match="MaxPool2D: padding"):
        MaxPool2D(2, padding=2)


def test_global_avg_pool_is_the_spatial_mean():
    x = randn(2, 3, 4, 5)
    layer = GlobalAvgPool2D()
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=(2, 3)), rtol=1e-14)
    dy = randn(2, 3, seed=1)
    np.testing.assert_allclose(layer.backward(dy), np.broadcast_to(dy[:, :, None, None] / 20,
                                                                   x.shape), rtol=1e-14)


def test_pooling_optional_parity_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = randn(2, 3, 9, 8)
    for geometry in NAMED_POOLS.values():
        stride = geometry["stride"] or geometry["kernel_size"]
        xt = torch.tensor(x)
        np.testing.assert_allclose(
            MaxPool2D(**geometry).forward(x),
            F.max_pool2d(xt, geometry["kernel_size"], stride, geometry["padding"]).numpy())
        np.testing.assert_allclose(
            AvgPool2D(**geometry).forward(x),
            F.avg_pool2d(xt, geometry["kernel_size"], stride, geometry["padding"],
                         count_include_pad=True).numpy(), rtol=1e-12)


# =========================================================================== other layers

@pytest.mark.parametrize("activation,fn", [
    (None, lambda z: z), ("linear", lambda z: z), ("relu", lambda z: np.maximum(z, 0)),
    ("leaky_relu", lambda z: np.where(z > 0, z, 0.01 * z)),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z))), ("tanh", np.tanh), ("softmax", ref.softmax),
])
def test_dense_forward_is_affine_then_activation(activation, fn):
    layer = Dense(4, 3, activation=activation).astype(np.float64)
    layer.bias.data[:] = randn(3, seed=1)
    x = randn(5, 4)
    np.testing.assert_allclose(layer.forward(x), fn(x @ layer.weight.data + layer.bias.data),
                               rtol=1e-12, atol=1e-15)
    assert layer.weight.shape == (4, 3)


@pytest.mark.parametrize("make", [lambda init: Dense(400, 300, init=init),
                                  lambda init: Conv2D(40, 300, (2, 5), init=init)],
                         ids=["dense", "conv2d"])
def test_initialisation_schemes(make):
    fan_in = 400                                         # 400 inputs, or 40 * 2 * 5
    minicnn.manual_seed(1)
    layer = make("kaiming_uniform")                      # the default, as PyTorch
    w, b = layer.weight.data, layer.bias.data
    limit = 1 / np.sqrt(fan_in)
    assert np.abs(w).max() <= limit and abs(w.std() - limit / np.sqrt(3)) < 0.01 * limit
    assert np.abs(b).max() <= limit and b.std() > 0
    he = make("he").weight.data
    assert abs(he.std() - np.sqrt(2 / fan_in)) < 0.01 * np.sqrt(2 / fan_in)
    assert not make("he").bias.data.any()                # zero bias for he / glorot
    fan_out = 300 * (10 if he.ndim == 4 else 1)          # out_channels * kh * kw for Conv2D
    glorot = make("glorot").weight.data
    g_limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(glorot).max() <= g_limit
    assert abs(glorot.std() - g_limit / np.sqrt(3)) < 0.01 * g_limit
    with pytest.raises(ValueError, match="unknown initialisation"):
        make("zeros")


def test_sigmoid_and_softmax_are_stable_for_huge_inputs():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no overflow warnings
        s = Sigmoid().forward(x)
        p = Softmax().forward(x)
    expected = [[0.0, 1 / (1 + np.exp(50.0)), 0.5, 1 / (1 + np.exp(-50.0)), 1.0]]
    np.testing.assert_allclose(s, expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p, [[0, 0, 0, 0, 1]], atol=1e-300)
    assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-15


def test_softmax_rows_sum_to_one_along_axis():
    x = randn(2, 3, 4, 5)
    for axis in (1, -1):
        p = Softmax(axis=axis).forward(x)
        np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-14)


def test_flatten_order_equals_reshape():
    x = randn(2, 3, 4, 5)
    layer = Flatten()
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    assert y[1, 1 * 20 + 2 * 5 + 3] == x[1, 1, 2, 3]          # C, H, W order
    assert layer.output_shape((3, 4, 5)) == (60,)
    np.testing.assert_array_equal(layer.backward(y), x)
    x_cl = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)   # layout must not matter
    np.testing.assert_array_equal(Flatten().forward(x_cl), x.reshape(2, -1))


def test_dropout_statistics_and_modes():
    x = np.ones((200, 50))
    layer = Dropout(0.3)
    y = layer.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)   # same mask
    layer.eval()
    assert layer.forward(x) is x
    assert Dropout(0.0).forward(x) is x


def test_dropout_is_reproducible_from_the_seed():
    x = np.ones((10, 10))
    minicnn.manual_seed(5)
    a = Dropout(0.5).forward(x)
    minicnn.manual_seed(5)
    b = Dropout(0.5).forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, Dropout(0.5).forward(x))


def test_batchnorm_training_and_running_statistics():
    x = 3 + 2 * randn(4, 3, 5, 6)
    layer = BatchNorm2D(3, momentum=0.1).astype(np.float64)
    y = layer.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)   # eps = 1e-5
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * var_unbiased, rtol=1e-12)
    layer.eval()
    expected = (x - layer.running_mean[:, None, None]) / np.sqrt(
        layer.running_var[:, None, None] + 1e-5)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12)


def test_batchnorm_optional_parity_with_torch():
    torch = pytest.importorskip("torch")
    x = randn(4, 3, 5, 6)
    ours = BatchNorm2D(3).astype(np.float64)
    theirs = torch.nn.BatchNorm2d(3).double()
    for _ in range(3):
        np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)


def test_add_and_concatenate_values():
    a, b = randn(2, 3, 4, 4), randn(2, 1, 4, 4, seed=1)
    np.testing.assert_array_equal(Add().forward(a, a, a), 3 * a)
    cat = Concatenate(axis=1)
    y = cat.forward(a, b)
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))
    da, db = cat.backward(y)
    np.testing.assert_array_equal(da, a)
    np.testing.assert_array_equal(db, b)
    assert cat.output_shape((3, 4, 4), (1, 4, 4)) == (4, 4, 4)
    assert Concatenate(axis=-1).output_shape((3, 4, 4), (3, 4, 2)) == (3, 4, 6)
    with pytest.raises(ValueError, match="batch axis"):
        Concatenate(axis=0)


def test_backward_adds_into_parameter_gradients_until_zero_grad():
    layer = Dense(3, 2).astype(np.float64)
    x, dy = randn(4, 3), randn(4, 2, seed=1)
    layer.forward(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-14)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_dropout_takes_float16_input():
    """NumPy's generator cannot draw float16: the mask is drawn in float32, applied in float16."""
    x = np.ones((4, 50), np.float16)
    y = Dropout(0.5).train().forward(x)
    assert y.dtype == np.float16
    assert set(np.unique(y).tolist()) <= {0.0, 2.0} and 0 < np.count_nonzero(y) < y.size
