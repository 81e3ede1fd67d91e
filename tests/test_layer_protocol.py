"""The layer protocol: what a newcomer writes naturally works, and mistakes are caught."""
import copy
import pickle

import numpy as np
import pytest

import minicnn
from minicnn.layers import Conv2D, Dense, Flatten, Layer, Parameter, ReLU, initializers
from minicnn.training import SoftmaxCrossEntropy


class _Parts(Layer):
    """Holds sub-layers in a list, a tuple and a dict, and a Parameter in a list."""

    def __init__(self):
        super().__init__()
        self.parts = [Dense(4, 4), Dense(4, 4)]
        self.pair = (ReLU(), Dense(4, 4))
        self.named = {"last": Dense(4, 2)}
        self.extra = [Parameter(initializers.zeros((2,)), "shift")]

    def output_shape(self, input_shape):
        return (2,)

    def forward(self, x):
        for layer in (*self.parts, *self.pair, self.named["last"]):
            x = layer.forward(x)
        return x + self.extra[0].data

    def backward(self, grad_out):
        self.extra[0].grad += grad_out.sum(axis=0)
        for layer in reversed((*self.parts, *self.pair, self.named["last"])):
            grad_out = layer.backward(grad_out)
        return grad_out


def test_parameters_and_layers_are_found_in_lists_tuples_and_dicts():
    layer = _Parts()
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["extra.0", "parts.0.weight", "parts.0.bias", "parts.1.weight",
                     "parts.1.bias", "pair.1.weight", "pair.1.bias", "named.last.weight",
                     "named.last.bias"]
    assert sum(p.size for p in layer.parameters()) == 3 * 20 + 10 + 2
    layer.eval()
    assert not layer.parts[1].training and not layer.named["last"].training
    minicnn.gradcheck(layer, (3, 4))
    model = minicnn.Sequential([_Parts()], input_shape=(4,))
    assert len(model.parameters()) == 9


def test_a_parameter_shared_by_two_layers_is_listed_once():
    a = Dense(3, 3)
    b = Dense(3, 3)
    b.weight = a.weight
    model = minicnn.Sequential([a, b])
    assert len(model.parameters()) == 3


class _Natural(Layer):
    """The way a newcomer writes a layer: save_for_backward / pop_saved, nothing else."""

    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        self.save_for_backward(x)
        return self.scale * x * x

    def backward(self, grad_out):
        (x,) = self.pop_saved()
        return grad_out * 2 * self.scale * x


def test_saved_values_follow_one_mechanism():
    layer = _Natural()
    x = np.arange(6.0).reshape(2, 3)
    with minicnn.no_grad():
        layer.forward(x)
    assert layer.__dict__.get("_saved") is None                  # nothing kept
    with pytest.raises(ValueError, match=r"_Natural\(scale=2.0\): backward called before forward"):
        layer.backward(np.ones((2, 3)))
    layer.forward(x)
    with minicnn.no_grad():
        layer.forward(x + 1)                        # inference leaves the saved input alone
    np.testing.assert_array_equal(layer.backward(np.ones((2, 3))), 4 * x)
    with pytest.raises(ValueError, match="backward called before forward"):
        layer.backward(np.ones((2, 3)))             # popped: memory freed, no stale reuse
    layer.forward(x)
    layer.clear_cache()
    with pytest.raises(ValueError, match="clear_cache"):
        layer.backward(np.ones((2, 3)))
    minicnn.gradcheck(_Natural(), (2, 3))


def test_input_grad_reaches_backward_explicitly():
    conv = Conv2D(1, 2, 3)
    x = np.ones((1, 1, 4, 4), dtype=np.float32)
    conv.forward(x)
    assert conv.backward_step(np.ones((1, 2, 2, 2), dtype=np.float32), input_grad=False) is None
    assert not hasattr(conv, "skip_input_grad")
    model = minicnn.Sequential([conv, Flatten(), _Natural(), Dense(8, 2)])
    out = model.forward(x, training=True)
    assert model.backward(np.ones_like(out), input_grad=False) is None
    model.forward(x, training=True)
    assert model.backward(np.ones_like(out), input_grad=True).shape == x.shape
    model.forward(x, training=True)
    assert model.backward(np.ones_like(out)) is None        # as PyTorch: inputs need no grad
    natural = _Natural()                            # backward without the keyword
    natural.forward(np.ones((2, 2)))
    assert natural.backward_step(np.ones((2, 2)), input_grad=False) is None


def _model():
    minicnn.manual_seed(0)
    return minicnn.Sequential([Conv2D(1, 2, 3, padding=1), ReLU(), Flatten(),
                               Dense(2 * 4 * 4, 3), _Natural(0.5)], input_shape=(1, 4, 4))


def _train_step(model, x):
    out = model.forward(x, training=True)
    loss = SoftmaxCrossEntropy()
    loss.forward(out, np.array([0, 1]))
    model.backward(loss.backward())


def test_deepcopy_gives_independent_parameters():
    model = _model()
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    model.forward(x, training=True)                 # something saved: not copied
    twin = copy.deepcopy(model)
    assert twin.layers[0].__dict__.get("_saved") is None
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p is not q and p.data is not q.data
        np.testing.assert_array_equal(p.data, q.data)
    twin.layers[0].weight.data += 1
    assert not np.array_equal(twin.layers[0].weight.data, model.layers[0].weight.data)
    _train_step(twin, x)
    assert twin.config() == model.config() and repr(twin) == repr(model)
    shallow = copy.copy(model)
    assert shallow.layers[0] is model.layers[0]


def test_pickle_round_trips_an_in_memory_model():
    model = _model()
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4)).astype(np.float32)
    _train_step(model, x)                           # gradients and buffers exist
    twin = pickle.loads(pickle.dumps(model))
    with minicnn.no_grad():
        np.testing.assert_array_equal(twin.forward(x, training=False),
                                      model.forward(x, training=False))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad)
    _train_step(twin, x)


def test_replica_shares_parameter_arrays_but_not_gradients():
    model = _model()
    twin = model.replica()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.data is q.data and p.grad is not q.grad and not q.grad.any()


class _Overwrites(Layer):
    """A mistake: backward assigns the parameter gradient instead of adding to it."""

    def __init__(self):
        super().__init__()
        self.s = Parameter(initializers.ones((3,)), "s")

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.s.data

    def backward(self, grad_out):
        (x,) = self.pop_saved()
        self.s.grad = (grad_out * x).sum(axis=0)       # should be +=
        return grad_out * self.s.data


def test_gradcheck_catches_a_backward_that_overwrites_the_gradient():
    with pytest.raises(minicnn.GradientCheckError, match="s:"):
        minicnn.gradcheck(_Overwrites(), (4, 3))


def test_constructor_arguments_are_recorded_by_the_most_derived_class():
    class Wide(Dense):
        def __init__(self, features: int, width: int = 5):
            super().__init__(features, width, activation="relu")

    layer = Wide(3)
    assert layer.config() == {"features": 3, "width": 5}
    assert Dense(2, 4).config()["activation"] is None
