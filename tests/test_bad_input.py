"""Bad input raises ValueError or TypeError whose message names the layer (its class name), what
it expected and what it got; nothing is broadcast silently."""
from __future__ import annotations

import re

import numpy as np
import pytest

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
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from minicnn.models import Input, Model, Sequential


def randn(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# (factory, a good input shape, number of inputs)
LAYERS = {
    "Conv2D": (lambda: Conv2D(3, 4, 3), (2, 3, 6, 6), 1),
    "Dense": (lambda: Dense(5, 2), (2, 5), 1),
    "MaxPool2D": (lambda: MaxPool2D(2), (2, 3, 6, 6), 1),
    "AvgPool2D": (lambda: AvgPool2D(3, 2, 1), (2, 3, 6, 6), 1),
    "GlobalAvgPool2D": (GlobalAvgPool2D, (2, 3, 6, 6), 1),
    "BatchNorm2D": (lambda: BatchNorm2D(3), (2, 3, 6, 6), 1),
    "ReLU": (ReLU, (2, 3, 4, 4), 1),
    "LeakyReLU": (LeakyReLU, (2, 3), 1),
    "Sigmoid": (Sigmoid, (2, 3), 1),
    "Tanh": (Tanh, (2, 3), 1),
    "Softmax": (Softmax, (2, 3), 1),
    "Flatten": (Flatten, (2, 3, 4, 4), 1),
    "Dropout": (Dropout, (2, 3), 1),
    "Add": (Add, (2, 3, 4, 4), 2),
    "Concatenate": (Concatenate, (2, 3, 4, 4), 2),
}
NAMES = list(LAYERS)


def feed(name, x):
    make, _, count = LAYERS[name]
    layer = make()
    return layer, layer.forward(*([x] * count))


def raises_naming(exc, name, *needles):
    """pytest.raises that also checks the message names the layer and each needle."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *args):
            result = self.ctx.__exit__(*args)
            msg = str(self.info.value)
            assert re.search(rf"\b{name}\b", msg), f"{name!r} not named in: {msg}"
            for needle in needles:
                assert needle in msg, f"{needle!r} not in: {msg}"
            return result
    return Check()


@pytest.mark.parametrize("name", NAMES)
def test_good_input_is_accepted(name):
    _, shape, _ = LAYERS[name]
    layer, y = feed(name, randn(*shape))
    assert np.isfinite(y).all()


# =========================================================================== dtypes

@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
@pytest.mark.parametrize("name", NAMES)
def test_integer_and_bool_arrays_are_rejected(name, dtype):
    _, shape, _ = LAYERS[name]
    x = np.ones(shape, dtype=dtype)
    with raises_naming(TypeError, name, "floating-point", str(np.dtype(dtype))):
        feed(name, x)


@pytest.mark.parametrize("name", NAMES)
def test_object_arrays_are_rejected(name):
    _, shape, _ = LAYERS[name]
    x = np.empty(shape, dtype=object)
    x.fill(1.0)
    with raises_naming(TypeError, name, "floating-point", "object"):
        feed(name, x)


@pytest.mark.parametrize("name", NAMES)
def test_non_arrays_are_rejected(name):
    with raises_naming(TypeError, name, "expected an array", "list"):
        feed(name, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("name", ["Conv2D", "Dense", "BatchNorm2D"])
def test_float64_input_into_float32_layer(name):
    _, shape, _ = LAYERS[name]
    with raises_naming(TypeError, name, "float32", "float64"):
        feed(name, randn(*shape, dtype=np.float64))


def test_float64_into_float32_model_names_the_first_layer():
    model = Sequential([Conv2D(1, 2, 3), Flatten()], input_shape=(1, 5, 5))
    with raises_naming(TypeError, "Conv2D", "float32", "float64", "conv2d_1"):
        model.forward(randn(2, 1, 5, 5, dtype=np.float64))


# =========================================================================== NaN and inf

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", NAMES)
def test_nan_or_inf_input_is_rejected(name, bad):
    _, shape, _ = LAYERS[name]
    x = randn(*shape)
    x.reshape(-1)[-1] = bad
    with raises_naming(ValueError, name, "NaN or inf"):
        feed(name, x)


@pytest.mark.parametrize("kind", ["Sequential", "Model"])
def test_models_check_their_input_for_nan(kind):
    if kind == "Sequential":
        model = Sequential([Flatten(), Dense(4, 2)])
    else:
        x = Input((4,))
        model = Model(x, Dense(4, 2)(x))
    bad = randn(3, 4)
    bad[1, 2] = np.nan
    with raises_naming(ValueError, kind, "NaN or inf"):
        model.forward(bad)


# =========================================================================== shapes

@pytest.mark.parametrize("name,shape,expected", [
    ("Conv2D", (3, 6, 6), "4-D"), ("Conv2D", (1, 2, 3, 6, 6), "4-D"),
    ("Dense", (2, 1, 5), "2-D"), ("Dense", (5,), "2-D"),
    ("MaxPool2D", (3, 6, 6), "4-D"), ("AvgPool2D", (2, 3, 6), "4-D"),
    ("GlobalAvgPool2D", (2, 3, 6), "4-D"), ("BatchNorm2D", (2, 3), "4-D"),
    ("Flatten", (5,), "2-D"),
])
def test_wrong_number_of_dimensions(name, shape, expected):
    with raises_naming(ValueError, name, expected, str(shape)):
        feed(name, randn(*shape))


@pytest.mark.parametrize("axis,shape", [(1, (3,)), (3, (2, 3)), (-3, (2, 3))])
def test_softmax_axis_missing_from_the_input(axis, shape):
    with raises_naming(ValueError, "Softmax", f"axis {axis}", str(shape)):
        Softmax(axis=axis).forward(randn(*shape))


def test_dense_fed_a_4d_batch_says_use_flatten():
    with raises_naming(ValueError, "Dense", "2-D", "(2, 5, 1, 1)", "Flatten"):
        Dense(5, 2).forward(randn(2, 5, 1, 1))


@pytest.mark.parametrize("name,shape,needle", [
    ("Conv2D", (2, 4, 6, 6), "3 input channels"), ("Conv2D", (2, 1, 6, 6), "3 input channels"),
    ("BatchNorm2D", (2, 2, 6, 6), "3 input channels"), ("Dense", (2, 6), "5 input features"),
])
def test_wrong_channel_or_feature_count(name, shape, needle):
    with raises_naming(ValueError, name, needle, str(shape)):
        feed(name, randn(*shape))


@pytest.mark.parametrize("layer,shape", [
    (lambda: Conv2D(1, 1, 3), (1, 1, 2, 2)),
    (lambda: Conv2D(1, 1, (1, 4)), (1, 1, 5, 3)),
    (lambda: Conv2D(1, 1, 3, dilation=2), (1, 1, 4, 4)),
    (lambda: MaxPool2D(3), (1, 1, 2, 5)),
    (lambda: AvgPool2D((2, 4)), (1, 1, 3, 3)),
])
def test_spatial_size_smaller_than_the_kernel(layer, shape):
    layer = layer()
    name = type(layer).__name__
    h, w = shape[2:]
    with raises_naming(ValueError, name, "smaller than", f"{h}x{w}"):
        layer.forward(randn(*shape))


def test_add_does_not_broadcast():
    with raises_naming(ValueError, "Add", "(2, 4, 8, 8)", "(2, 1, 8, 8)"):
        Add().forward(randn(2, 4, 8, 8), randn(2, 1, 8, 8))
    with raises_naming(ValueError, "Add", "(2, 4, 8, 8)", "(2, 8, 8)"):
        Add().forward(randn(2, 4, 8, 8), randn(2, 8, 8))
    with raises_naming(ValueError, "Add", "two or more"):
        Add().forward(randn(2, 4))


def test_add_with_different_batch_sizes_is_rejected():
    with pytest.raises(ValueError) as info:
        Add().forward(randn(2, 4), randn(3, 4))
    assert "Add" in str(info.value)


def test_concatenate_rejects_mismatched_shapes():
    with raises_naming(ValueError, "Concatenate", "(3, 4, 4)", "(3, 5, 4)"):
        Concatenate(axis=1).forward(randn(2, 3, 4, 4), randn(2, 3, 5, 4))
    with raises_naming(ValueError, "Concatenate", "(3, 4, 4)", "(3, 4)"):
        Concatenate(axis=1).forward(randn(2, 3, 4, 4), randn(2, 3, 4))
    with pytest.raises(ValueError, match="Concatenate"):
        Concatenate(axis=1).forward(randn(2, 3, 4), randn(3, 3, 4))    # batch sizes differ


@pytest.mark.parametrize("axis", [2, 4, -3])
def test_concatenate_axis_out_of_range_is_rejected(axis):
    """axis must exist in the input: (N, 4) has axes 0 and 1 (or -1, -2)."""
    with raises_naming(ValueError, "Concatenate", "axis", "(4,)"):
        Concatenate(axis=axis).forward(randn(2, 4), randn(2, 4))
    with raises_naming(ValueError, "Concatenate", "axis", "(4,)"):
        x = Input((4,))
        Concatenate(axis=axis)(x, x)


def test_concatenate_of_1d_inputs_is_rejected():
    with raises_naming(ValueError, "Concatenate", "axis"):
        Concatenate(axis=1).forward(randn(3), randn(3))


# =========================================================================== backward misuse

@pytest.mark.parametrize("name", NAMES)
def test_backward_before_any_forward(name):
    make, shape, _ = LAYERS[name]
    with raises_naming(ValueError, name, "backward called before forward"):
        make().backward(randn(*shape))


@pytest.mark.parametrize("name", NAMES)
def test_second_backward_without_forward(name):
    _, shape, _ = LAYERS[name]
    layer, y = feed(name, randn(*shape))
    layer.backward(np.ones_like(y))
    with raises_naming(ValueError, name, "backward called before forward"):
        layer.backward(np.ones_like(y))


def test_backward_before_forward_in_a_model_names_the_layer():
    model = Sequential([Flatten(), Dense(4, 2)])
    with raises_naming(ValueError, "Dense", "dense_1", "backward called before forward"):
        model.backward(randn(3, 2))


def test_wrong_input_to_a_model_names_the_layer():
    model = Sequential([Conv2D(1, 2, 3), Flatten()])          # no declared input shape
    with raises_naming(ValueError, "Conv2D", "conv2d_1", "1 input channels", "(2, 3, 5, 5)"):
        model.forward(randn(2, 3, 5, 5))
    with raises_naming(TypeError, "Conv2D", "floating-point", "int64"):
        model.forward(np.ones((2, 1, 5, 5), dtype=np.int64))


@pytest.mark.parametrize("graph", [False, True])
def test_an_input_of_another_size_than_declared_names_both_shapes(graph):
    if graph:
        inputs = Input((1, 28, 28))
        model = Model(inputs, Dense(784, 2)(Flatten()(inputs)))
    else:
        model = Sequential([Flatten(), Dense(784, 2)], input_shape=(1, 28, 28))
    name = "Model" if graph else "Sequential"
    with raises_naming(ValueError, name, "(N, 1, 28, 28)", "(2, 1, 32, 32)"):
        model.forward(randn(2, 1, 32, 32))


# =========================================================================== constructors

def test_constructor_arguments_are_validated():
    with raises_naming(ValueError, "Conv2D", "in_channels", "0"):
        Conv2D(0, 4, 3)
    with raises_naming(ValueError, "Conv2D", "out_channels", "'4'"):
        Conv2D(3, "4", 3)
    with raises_naming(TypeError, "Conv2D", "kernel_size", "1.5"):
        Conv2D(3, 4, 1.5)
    with raises_naming(ValueError, "Conv2D", "stride"):
        Conv2D(3, 4, 3, stride=0)
    with raises_naming(ValueError, "Conv2D", "padding"):
        Conv2D(3, 4, 3, padding=-1)
    with raises_naming(ValueError, "Dense", "in_features", "0"):
        Dense(0, 3)
    with raises_naming(ValueError, "Dropout", "p", "1.0"):
        Dropout(1.0)
    with raises_naming(ValueError, "MaxPool2D", "kernel_size"):
        MaxPool2D(0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Dense(3, 3, activation="swish")
    with pytest.raises(ValueError, match="unknown initialisation 'ones'"):
        Dense(3, 3, init="ones")


def test_backend_names_are_validated():
    with pytest.raises(ValueError, match=r"unknown backend 'bogus'.*numpy.*cupy"):
        minicnn.set_backend("bogus")
    assert minicnn.get_backend() == "numpy"


# =========================================================================== inputs at inference

def _ref_like():
    return Sequential([Conv2D(1, 2, 3, padding=1), ReLU(), Flatten(), Dense(2 * 6 * 6, 3)],
                      input_shape=(1, 6, 6))


@pytest.mark.parametrize("call", ["predict", "evaluate", "fit"])
def test_non_finite_inputs_are_refused_naming_the_sample(call):
    model = _ref_like()
    x = randn(5, 6, 6)
    x[3, 2, 1] = np.nan
    y = np.arange(5) % 3
    run = {"predict": lambda: model.predict(x), "evaluate": lambda: model.evaluate((x, y)),
           "fit": lambda: model.fit((x, y), epochs=1, progress=False,
                                    optimizer=minicnn.optim.SGD(model.parameters(), 0.1))}[call]
    with pytest.raises(ValueError, match=r"DataLoader: the images hold NaN or inf \(first in "
                                         r"sample 3\)"):
        run()


def test_empty_batches_and_non_arrays_name_the_model():
    model = _ref_like()
    with pytest.raises(ValueError, match=r"Sequential: expected a batch of at least one sample "
                                         r"\(N, \.\.\.\), got shape \(0, 1, 6, 6\)"):
        model.forward(np.zeros((0, 1, 6, 6), np.float32))
    with pytest.raises(TypeError, match="Sequential: expected an array .*got list"):
        model([1.0, 2.0, 3.0])
    assert Flatten().forward(np.zeros((0, 2, 3), np.float32)).shape == (0, 6)
