"""Sequential and graph Models: end-to-end gradient checks, fan-out, shape errors while building,
summary(), config round trips, Flatten order and moving between backends."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import gpu_unavailable_reason, randn

import minicnn
from minicnn import models
from minicnn.core import backend
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
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)
from minicnn.models import Input, Model, Sequential
from minicnn.testing.gradient_check import gradcheck

TOL = 1e-6
EPS = 1e-5     # see tests/test_layers.py: central differences are exact up to rounding here


pytestmark = pytest.mark.usefixtures("seeded")


def build_graph():
    """The residual + concatenation graph of the brief, ending in Flatten and Dense."""
    x = Input((2, 8, 8))
    h = Conv2D(2, 4, 3, padding=1)(x)
    a = ReLU()(h)
    b = Conv2D(4, 4, 3, padding=1)(a)
    r = Add()(a, b)
    c = Concatenate(axis=1)(r, h)
    p = MaxPool2D(2)(c)
    f = Flatten()(p)
    y = Dense(8 * 4 * 4, 3)(f)
    return Model(x, y)


def build_sequential():
    """A small CNN using most layer types. The first convolution has no bias: before a
    training-mode BatchNorm its gradient is exactly zero, which a relative check cannot test."""
    return Sequential([
        Conv2D(2, 3, (3, 2), padding=(1, 0), bias=False, init="he"), BatchNorm2D(3),
        LeakyReLU(0.1), MaxPool2D(2, 1), Conv2D(3, 4, 3, stride=2, padding=1, init="he"), Tanh(),
        AvgPool2D(2, 1), Flatten(), Dropout(0.25), Dense(4 * 2 * 2, 6, activation="relu",
                                                         init="he"),
        Dense(6, 3, init="he"),
    ], input_shape=(2, 7, 8))


def copy_parameters(src, dst):
    src_params, dst_params = src.named_parameters(), dst.named_parameters()
    for (ns, ps), (nd, pd) in zip(src_params, dst_params, strict=True):
        assert ns == nd and ps.shape == pd.shape
        pd.data = ps.data.copy()
    for a, b in zip(src.layers, dst.layers, strict=True):
        b.load_state_arrays({k: v.copy() for k, v in a.state_arrays().items()})


# =========================================================================== gradients

@pytest.mark.slow
def test_graph_model_gradcheck_end_to_end():
    model = build_graph()
    errors = gradcheck(model, (2, 2, 8, 8), eps=EPS, tol=TOL)
    assert max(errors.values()) < TOL
    assert set(errors) == {"input", "conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight",
                           "conv2d_2.bias", "dense_1.weight", "dense_1.bias"}


@pytest.mark.slow
def test_sequential_gradcheck_end_to_end():
    model = build_sequential()
    for k in range(2):      # some running statistics; the check runs in training mode anyway
        model.forward(randn(4, 2, 7, 8, seed=k).astype(np.float32))
    errors = gradcheck(model, (3, 2, 7, 8), eps=EPS, tol=TOL)
    assert max(errors.values()) < TOL
    assert "batchnorm2d_1.weight" in errors and "dense_2.bias" in errors
    assert "conv2d_1.bias" not in errors


def test_sequential_gradcheck_in_eval_mode():
    model = build_sequential()
    model.forward(randn(4, 2, 7, 8).astype(np.float32))
    model.eval()
    errors = gradcheck(model, (2, 2, 7, 8), eps=EPS, tol=TOL)
    assert max(errors.values()) < TOL


def test_tensor_used_by_several_layers_sums_its_gradients():
    x = Input((3,))
    d1, d2 = Dense(3, 4), Dense(3, 4)
    a = d1(x)                        # x feeds two layers
    b = d2(x)
    s = Add()(a, a, b)               # a feeds Add twice
    model = Model(x, s).astype(np.float64)
    xs = randn(5, 3)
    y = model.forward(xs)
    w1, b1, w2, b2 = d1.weight.data, d1.bias.data, d2.weight.data, d2.bias.data
    np.testing.assert_allclose(y, 2 * (xs @ w1 + b1) + xs @ w2 + b2, rtol=1e-12)
    dy = randn(5, 4, seed=1)
    dx = model.backward(dy, input_grad=True)
    np.testing.assert_allclose(dx, 2 * dy @ w1.T + dy @ w2.T, rtol=1e-12)
    np.testing.assert_allclose(d1.weight.grad, 2 * xs.T @ dy, rtol=1e-12)
    np.testing.assert_allclose(d1.bias.grad, 2 * dy.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(d2.weight.grad, xs.T @ dy, rtol=1e-12)


def test_graph_with_list_call_syntax_and_unused_branch():
    x = Input((2, 5, 5))
    h = Conv2D(2, 2, 3, padding=1)(x)
    Sigmoid()(h)                                   # a branch the output does not use
    y = Add()([h, ReLU()(h)])
    model = Model(x, y)
    assert len(model.layers) == 3                  # the unused branch is not part of the model
    assert gradcheck(model, (1, 2, 5, 5), eps=EPS, tol=TOL)


def test_input_grad_false_skips_only_the_input_gradient():
    model = Sequential([Conv2D(1, 2, 3), Flatten(), Dense(2 * 3 * 3, 2)], input_shape=(1, 5, 5))
    model.astype(np.float64)
    x, dy = randn(2, 1, 5, 5), randn(2, 2, seed=1)
    model.forward(x)
    assert model.backward(dy, input_grad=False) is None
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy, input_grad=True)
    assert dx.shape == x.shape
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_allclose(g, p.grad, rtol=1e-14)


def test_flatten_then_dense_uses_channel_height_width_order():
    model = Sequential([Flatten(), Dense(2 * 3 * 4, 5)], input_shape=(2, 3, 4)).astype(np.float64)
    x = randn(3, 2, 3, 4)
    dense = model.layers[1]
    np.testing.assert_allclose(model.forward(x),
                               x.reshape(3, -1) @ dense.weight.data + dense.bias.data, rtol=1e-12)


# =========================================================================== building errors

def test_building_with_wrong_channel_count_names_layer_and_shapes():
    x = Input((2, 8, 8))
    with pytest.raises(ValueError) as info:
        Conv2D(3, 4, 3)(x)
    msg = str(info.value)
    assert "Conv2D" in msg and "(2, 8, 8)" in msg and "(3, H, W)" in msg


def test_building_add_with_mismatched_shapes_names_both():
    x = Input((2, 8, 8))
    a = Conv2D(2, 4, 3, padding=1)(x)
    b = Conv2D(2, 4, 3)(x)
    with pytest.raises(ValueError) as info:
        Add()(a, b)
    msg = str(info.value)
    assert "Add" in msg and "(4, 8, 8)" in msg and "(4, 6, 6)" in msg


def test_building_concatenate_with_mismatched_shapes_names_both():
    x = Input((2, 8, 8))
    a = Conv2D(2, 4, 3, padding=1)(x)
    b = MaxPool2D(2)(x)
    with pytest.raises(ValueError) as info:
        Concatenate()(a, b)
    msg = str(info.value)
    assert "Concatenate" in msg and "(4, 8, 8)" in msg and "(2, 4, 4)" in msg


def test_building_dense_on_wrong_features_names_both():
    x = Input((2, 4, 4))
    f = Flatten()(x)
    with pytest.raises(ValueError) as info:
        Dense(30, 2)(f)
    msg = str(info.value)
    assert "Dense" in msg and "(32,)" in msg and "(30,)" in msg


def test_building_a_too_small_input_names_the_layer():
    x = Input((1, 4, 4))
    h = MaxPool2D(2)(x)
    with pytest.raises(ValueError) as info:
        Conv2D(1, 1, 3)(h)
    msg = str(info.value)
    assert "Conv2D" in msg and "(1, 2, 2)" in msg and "smaller than the kernel" in msg


def test_sequential_with_input_shape_checks_at_construction():
    with pytest.raises(ValueError) as info:
        Sequential([Conv2D(1, 4, 3), Flatten(), Dense(10, 2)], input_shape=(1, 8, 8))
    msg = str(info.value)
    assert "dense_1" in msg and "Dense" in msg and "(144,)" in msg and "(10,)" in msg


def test_model_construction_errors():
    x = Input((3,))
    d = Dense(3, 3)
    with pytest.raises(ValueError, match="appears twice"):
        Model(x, d(d(x)))
    with pytest.raises(TypeError, match="Input"):
        Model(Dense(3, 3)(x), Dense(3, 3)(x))
    other = Input((3,))
    with pytest.raises(ValueError, match="does not depend on the given Input"):
        Model(x, Dense(3, 2)(other))
    model = Model(x, Dense(3, 2)(x))
    assert model.output_shape((3,)) == (2,)
    with pytest.raises(ValueError, match=r"expected input shape \(3,\)"):
        model.output_shape((4,))


# =========================================================================== summary

def test_sequential_summary_lists_layers_shapes_params_and_totals():
    model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                        Dense(4 * 4 * 4, 10)], input_shape=(1, 8, 8))
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    expected_rows = [("conv2d_1 (Conv2D)", "(N, 4, 8, 8)", "40"), ("relu_1 (ReLU)",
                     "(N, 4, 8, 8)", "0"), ("maxpool2d_1 (MaxPool2D)", "(N, 4, 4, 4)", "0"),
                     ("flatten_1 (Flatten)", "(N, 64)", "0"),
                     ("dense_1 (Dense)", "(N, 10)", "650")]
    for name, shape, params in expected_rows:
        row = next(line for line in lines if line.startswith(name))
        assert row.split()[-1] == params and shape in row
    assert "Total params: 690" in text and "Trainable params: 690" in text
    assert sum(p.size for p in model.parameters()) == 690


def test_summary_prints_with_thousands_separator(capsys):
    model = Sequential([Flatten(), Dense(3 * 20 * 20, 10)], input_shape=(3, 20, 20))
    returned = model.summary()
    printed = capsys.readouterr().out
    assert returned.strip() == printed.strip()
    assert "12,010" in printed and "Total params: 12,010" in printed


def test_graph_summary():
    text = build_graph().summary(print_fn=None)
    for needle in ["conv2d_1 (Conv2D)", "add_1 (Add)", "concatenate_1 (Concatenate)",
                   "(N, 8, 8, 8)", "(N, 128)", "(N, 3)"]:
        assert needle in text
    total = (4 * 2 * 9 + 4) + (4 * 4 * 9 + 4) + (128 * 3 + 3)
    assert f"Total params: {total:,}" in text


def test_summary_without_input_shape_explains():
    with pytest.raises(ValueError, match="input_shape"):
        Sequential([ReLU()]).summary(print_fn=None)


# =========================================================================== config round trip

def round_trip(model):
    """config -> JSON text -> config -> a new model, both through from_config and through
    models.layer_from_config."""
    text = json.dumps(model.config())
    entry = {"class": type(model).__name__, "config": json.loads(text)}
    return [type(model).from_config(json.loads(text)), models.layer_from_config(entry)]


@pytest.mark.parametrize("build", [build_sequential, build_graph], ids=["sequential", "graph"])
def test_config_round_trip_gives_the_same_outputs(build):
    model = build()
    x = randn(3, *(2, 7, 8) if build is build_sequential else (2, 8, 8)).astype(np.float32)
    model.forward(x)                                # BatchNorm running stats
    model.eval()
    expected = model.forward(x)
    for twin in round_trip(model):
        assert type(twin) is type(model)
        assert [layer.name for layer in twin.layers] == [layer.name for layer in model.layers]
        assert json.dumps(twin.config()) == json.dumps(model.config())
        copy_parameters(model, twin)
        twin.eval()
        np.testing.assert_array_equal(twin.forward(x), expected)
        assert twin.summary(print_fn=None) == model.summary(print_fn=None)


def test_config_round_trip_keeps_layer_arguments():
    model = Sequential([Conv2D(1, 2, (3, 1), stride=(2, 1), padding=(1, 0),
                               dilation=(1, 1), bias=False, init="glorot"),
                        Conv2D(2, 2, 3, padding="same"), Flatten(),
                        Dense(2 * 3 * 4, 2, activation=LeakyReLU(0.3), bias=False)],
                       input_shape=(1, 5, 4))
    (twin, _) = round_trip(model)
    conv, same, _, dense = twin.layers
    assert conv.kernel_size == (3, 1) and conv.stride == (2, 1) and conv.bias is None
    assert same.padding == (1, 1)
    assert isinstance(dense.activation, LeakyReLU) and dense.activation.negative_slope == 0.3
    assert dense.bias is None
    assert twin.input_shape == (1, 5, 4)


def test_nested_sequential_round_trip():
    inner = Sequential([Conv2D(1, 2, 3, padding=1), ReLU()], input_shape=(1, 4, 4))
    model = Sequential([inner, GlobalAvgPool2D(), Dense(2, 2)], input_shape=(1, 4, 4))
    x = randn(2, 1, 4, 4).astype(np.float32)
    expected = model.forward(x)
    (twin, twin2) = round_trip(model)
    for t in (twin, twin2):
        for (_, p), (_, q) in zip(model.named_parameters(), t.named_parameters(), strict=True):
            q.data = p.data.copy()
        np.testing.assert_array_equal(t.forward(x), expected)


def test_unknown_layer_class_is_reported():
    with pytest.raises(ValueError, match="unknown layer class 'Nope'"):
        models.layer_from_config({"class": "Nope", "config": {}})


# =========================================================================== modes, dtypes, devices

class _ModeSpy(minicnn.layers.Layer):
    """Records the training mode each forward saw."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_train_and_eval_reach_every_layer():
    model = build_sequential()
    model.eval()
    assert all(not layer.training for layer in model.layers)
    model.train()
    assert all(layer.training for layer in model.layers)


def test_forward_training_argument_holds_for_that_call_only():
    spy = _ModeSpy()
    model = Sequential([spy, Flatten()])
    model.eval()
    x = randn(2, 3).astype(np.float32)
    model.forward(x, training=True)
    model.forward(x)
    model.train()
    model.forward(x, training=False)
    model.forward(x)
    assert spy.seen == [True, False, False, True]
    assert model.training and spy.training


def test_named_parameters_are_prefixed_by_layer_names():
    model = Sequential([Conv2D(1, 2, 3), Flatten(), Dense(2, 2)])
    names = [n for n, _ in model.named_parameters()]
    assert names == ["conv2d_1.weight", "conv2d_1.bias", "dense_1.weight", "dense_1.bias"]


def test_astype_float64_then_back():
    model = build_graph()
    model.astype(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64
               for p in model.parameters())
    assert model.forward(randn(1, 2, 8, 8)).dtype == np.float64
    model.astype(np.float32)
    assert model.forward(randn(1, 2, 8, 8).astype(np.float32)).dtype == np.float32


def test_to_numpy_keeps_numpy_arrays():
    model = build_sequential()
    assert model.to("numpy") is model
    for p in model.parameters():
        assert type(p.data) is np.ndarray and type(p.grad) is np.ndarray
    assert type(model.layers[1].running_mean) is np.ndarray
    assert model.forward(randn(1, 2, 7, 8).astype(np.float32)).shape == (1, 3)


def test_to_cupy_without_gpu_raises_backend_error_and_leaves_model_usable():
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is visible: covered by test_to_cupy_and_back_on_gpu")
    model = build_sequential()
    with pytest.raises(minicnn.BackendError, match="cupy"):
        model.to("cupy")
    assert all(type(p.data) is np.ndarray for p in model.parameters())
    assert model.forward(randn(1, 2, 7, 8).astype(np.float32)).shape == (1, 3)


@pytest.mark.gpu
def test_to_cupy_and_back_on_gpu():
    import cupy
    model = build_sequential()
    model.eval()
    x = randn(2, 2, 7, 8).astype(np.float32)
    expected = model.forward(x)
    model.to("cupy")
    try:
        backend.set_backend("cupy")
        assert all(backend.is_cupy_array(p.data) for p in model.parameters())
        y = model.forward(cupy.asarray(x))
        np.testing.assert_allclose(backend.to_numpy(y), expected, rtol=1e-4, atol=1e-5)
    finally:
        backend.set_backend("numpy")
    model.to("numpy")
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-6, atol=1e-7)
