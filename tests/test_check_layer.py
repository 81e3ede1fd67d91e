"""check_layer: every built-in layer keeps the layer contract, and each broken rule is named."""
from __future__ import annotations

import pytest

import minicnn
import minicnn.layers as L
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
    Identity,
    Layer,
    LeakyReLU,
    MaxPool2D,
    Parameter,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    initializers,
)
from minicnn.testing import LayerContractError, check_layer

BUILT_IN = [
    (lambda: Conv2D(2, 3, 3, padding=1, stride=2), (4, 2, 6, 6)),
    (lambda: Dense(5, 3, activation="tanh"), (4, 5)),
    (lambda: MaxPool2D(2), (4, 2, 6, 6)),
    (lambda: AvgPool2D(2, padding=1), (4, 2, 5, 5)),
    (lambda: GlobalAvgPool2D(), (4, 3, 4, 4)),
    (ReLU, (4, 3, 5)),
    (lambda: LeakyReLU(0.2), (4, 3, 5)),
    (Sigmoid, (4, 6)),
    (Tanh, (4, 6)),
    (Softmax, (4, 6)),
    (Identity, (4, 6)),
    (Flatten, (4, 2, 3, 3)),
    (lambda: Dropout(0.3), (4, 6)),
    (lambda: BatchNorm2D(3), (4, 3, 6, 6)),
    (Add, [(4, 2, 3), (4, 2, 3)]),
    (lambda: Concatenate(axis=1), [(4, 2, 3), (4, 1, 3)]),
    (lambda: Dense(5, 3, activation=LeakyReLU(0.2)), (4, 5)),
    (lambda: minicnn.Sequential([Conv2D(1, 2, 3), ReLU(), Flatten(), Dense(8, 2)],
                                input_shape=(1, 4, 4)), (4, 1, 4, 4)),
    (lambda: _residual(), (4, 2, 3)),
    (lambda: Conv2D(4, 6, 3, padding="same", groups=2), (4, 4, 5, 5)),
    (lambda: Conv2D(3, 6, (2, 3), padding="same", groups=3), (4, 3, 5, 6)),
    (lambda: L.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (4, 4, 3, 3)),
    (lambda: MaxPool2D(3, 2, 1, dilation=1, ceil_mode=True), (4, 2, 6, 6)),
    (lambda: AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), (4, 2, 6, 6)),
    (L.GlobalMaxPool2D, (4, 3, 4, 4)),
    (lambda: L.AdaptiveAvgPool2D((2, 3)), (4, 2, 5, 7)),
    (lambda: L.BatchNorm1D(5), (4, 5)),
    (lambda: L.LayerNorm((3, 4)), (4, 2, 3, 4)),
    (lambda: L.GroupNorm(2, 4), (4, 4, 3, 3)),
    (lambda: L.Upsample2D(2, "bilinear"), (4, 2, 3, 3)),
    (lambda: L.Upsample2D((2, 3)), (4, 2, 3, 3)),
    (lambda: L.ZeroPad2D((1, 0, 2, 1)), (4, 2, 3, 3)),
    (lambda: L.Dropout2D(0.3), (4, 3, 2, 2)),
    (L.GELU, (4, 6)),
    (lambda: L.GELU("tanh"), (4, 6)),
    (L.SiLU, (4, 6)),
    (lambda: L.ELU(0.5), (4, 6)),
    (lambda: L.Softplus(2.0, 3.0), (4, 6)),
    (L.ReLU6, (4, 3, 5)),
    (L.Hardswish, (4, 3, 5)),
    (lambda: L.PReLU(3), (4, 3, 5)),
    (L.LogSoftmax, (4, 6)),
]


def test_every_registered_built_in_layer_is_exported_and_checked_here():
    """A layer class defined in minicnn.layers is in minicnn.layers.__all__ and in BUILT_IN."""
    built_in = {name for name, cls in L.LAYER_REGISTRY.items()
                if cls.__module__.startswith("minicnn.layers.")}
    assert built_in - set(L.__all__) == set()
    checked = {type(make()).__name__ for make, _ in BUILT_IN}
    assert built_in - checked == set()


def _residual() -> minicnn.Model:
    x = minicnn.Input((2, 3))
    return minicnn.Model(x, Add()(x, Tanh()(x)))


@pytest.mark.parametrize("make,shape", BUILT_IN, ids=[type(m()).__name__ for m, _ in BUILT_IN])
def test_every_built_in_layer_keeps_the_contract(make, shape):
    check_layer(make(), shape)


def test_check_layer_is_a_top_level_name():
    assert minicnn.check_layer is check_layer and minicnn.LayerContractError is LayerContractError


def test_the_checked_layer_is_left_as_it_was():
    layer = Dense(5, 3)
    before = layer.weight.data.copy()
    check_layer(layer, (4, 5))
    assert layer.dtype == before.dtype and (layer.weight.data == before).all()
    assert not layer.weight.grad.any()


class ChannelScale(Layer):
    """y = x * s, one s per channel; ``assign`` makes backward assign its gradient."""

    per_sample = True

    def __init__(self, channels: int, assign: bool = False):
        super().__init__()
        self.s = Parameter(initializers.ones((1, channels, 1)), "s")

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.s.data

    def backward(self, grad_out):
        (x,) = self.pop_saved()
        grad = (grad_out * x).sum(axis=(0, 2), keepdims=True)
        if self.config()["assign"]:
            self.s.grad = grad
        else:
            self.s.grad += grad
        return grad_out * self.s.data


class BatchCentre(Layer):
    """x - the batch mean, claiming per_sample = True."""

    per_sample = True

    def forward(self, x):
        return x - x.mean(axis=0, keepdims=True)

    def backward(self, grad_out):
        return grad_out - grad_out.mean(axis=0, keepdims=True)


class Halve(Layer):
    """Keeps every other feature, without output_shape."""

    per_sample = True

    def forward(self, x):
        return x[:, ::2]

    def backward(self, grad_out):
        xp = backend.get_array_module(grad_out)
        out = xp.zeros((grad_out.shape[0], grad_out.shape[1] * 2), dtype=grad_out.dtype)
        out[:, ::2] = grad_out
        return out


class Drift(Layer):
    """Keeps a running mean in a plain attribute, not declared with add_state."""

    per_sample = True

    def __init__(self):
        super().__init__()
        self.running = 0.0

    def forward(self, x):
        if self.training:
            self.running = 0.5 * self.running + 0.5 * float(x.mean())
            return x
        return x - self.running

    def backward(self, grad_out):
        return grad_out


class KeepsInNoGrad(Layer):
    per_sample = True

    def forward(self, x):
        self._saved = (x,)
        return 2 * x

    def backward(self, grad_out):
        self._saved = None
        return 2 * grad_out


def test_a_correct_custom_layer_passes():
    check_layer(ChannelScale(3), (4, 3, 5))


@pytest.mark.parametrize("layer,shape,rule", [
    (ChannelScale(3, assign=True), (4, 3, 5), "accumulate gradients"),
    (BatchCentre(), (4, 6), "split"),
    (Halve(), (4, 6), "output shape"),
    (Drift(), (4, 6), "checkpoint round trip"),
    (KeepsInNoGrad(), (4, 6), "no saved values after no_grad"),
], ids=["assigns", "mixes samples", "no output_shape", "undeclared state", "saves in no_grad"])
def test_each_broken_rule_is_named(layer, shape, rule):
    name = type(layer).__name__
    with pytest.raises(LayerContractError, match=rf"^check_layer\({name}\): rule '{rule}': ") \
            as exc:
        check_layer(layer, shape)
    assert "\n" not in str(exc.value)
