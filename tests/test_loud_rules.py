"""The layer contract's rules fail loudly, in one line, where they are broken (each of these was
a silent wrong result or a wrong picture before)."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.core import backend
from minicnn.layers import LAYER_REGISTRY, Dense, Flatten, Layer, ReLU
from minicnn.layers.base import layer_from_config
from minicnn.training import parallel


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the registry

def test_a_user_class_named_like_a_built_in_is_refused_at_definition(tmp_path):
    with pytest.raises(TypeError) as exc:
        class ReLU(Layer):                        # a clipped ReLU of a user's
            per_sample = True

            def forward(self, x):
                return backend.get_array_module(x).clip(x, 0, 6)
    message = _one_line(exc)
    assert "ReLU" in message and __name__ in message and "minicnn.layers.activations" in message
    with pytest.raises(TypeError, match="minicnn.layers.dense.Dense"):
        class Dense(Layer):                       # another signature
            def __init__(self, units: int):
                super().__init__()
    assert LAYER_REGISTRY["ReLU"].__module__ == "minicnn.layers.activations"
    model = minicnn.Sequential([Flatten(), minicnn.layers.Dense(4, 2), minicnn.layers.ReLU()])
    minicnn.save(model, tmp_path / "m.npz")
    loaded = minicnn.load(tmp_path / "m.npz")
    assert type(loaded.layers[2]) is minicnn.layers.ReLU


def test_a_class_defined_again_in_its_own_module_replaces_itself():
    for scale in (2.0, 3.0):                      # a notebook cell run twice, a reload
        class Doubled(Layer):
            per_sample = True
            factor = scale

            def forward(self, x):
                return x * self.factor
    assert LAYER_REGISTRY["Doubled"].factor == 3.0


@pytest.mark.parametrize("name", ["Activation", "Network", "Layer"])
def test_abstract_bases_are_not_loadable(name):
    with pytest.raises(ValueError, match=f"unknown layer class '{name}'"):
        layer_from_config({"class": name, "name": "", "config": {}})


# --------------------------------------------------------------------------- output shapes

class EveryOther(Layer):
    """Keeps every other feature, and has no output_shape."""

    per_sample = True

    def forward(self, x):
        return x[:, ::2]

    def backward(self, grad_out):
        xp = backend.get_array_module(grad_out)
        out = xp.zeros((grad_out.shape[0], 2 * grad_out.shape[1]), grad_out.dtype)
        out[:, ::2] = grad_out
        return out


def test_a_shape_changing_layer_without_output_shape_is_named_when_a_model_is_built():
    with pytest.raises(ValueError) as exc:
        minicnn.Sequential([EveryOther(), Dense(6, 2)], input_shape=(6,))
    message = _one_line(exc)
    assert "EveryOther" in message and "(6,) to (3,)" in message and "output_shape" in message
    with pytest.raises(ValueError, match=r"EveryOther.*\(6,\) to \(3,\).*output_shape"):
        EveryOther()(minicnn.Input((6,)))


def test_summary_shows_the_shape_forward_gives():
    class Keeps(Layer):
        per_sample = True

        def forward(self, x):
            return 2 * x

        def backward(self, grad_out):
            return 2 * grad_out

    model = minicnn.Sequential([Keeps(), Dense(6, 2)], input_shape=(6,))
    assert "(N, 6)" in model.summary(print_fn=None)


# --------------------------------------------------------------------------- constructor args

class Holder(Layer):
    def __init__(self, value=None, scale: float = 1.0):
        super().__init__()


@pytest.mark.parametrize("value,kind", [(lambda x: x, "function"),
                                        (np.zeros(3), "ndarray"), ({1, 2}, "set")])
def test_an_argument_json_cannot_hold_is_refused_at_construction(value, kind):
    with pytest.raises(TypeError) as exc:
        Holder(value)
    message = _one_line(exc)
    assert message.startswith("Holder: constructor argument value is a " + kind)


def test_json_friendly_arguments_are_accepted(tmp_path):
    layer = Holder({"a": [1, 2.5, None, "x"], "b": (3, 4)}, scale=np.float32(0.5))
    assert layer.config()["value"]["b"] == (3, 4)


# --------------------------------------------------------------------------- used twice

def test_a_layer_used_twice_anywhere_in_one_model_is_refused():
    shared = Dense(4, 4)
    with pytest.raises(ValueError) as exc:
        minicnn.Sequential([minicnn.Sequential([shared]), minicnn.Sequential([shared])])
    message = _one_line(exc)
    assert "appears twice in one model" in message and "sequential_1.dense_1" in message
    relu = ReLU()
    with pytest.raises(ValueError, match="appears twice"):
        minicnn.Sequential([Dense(4, 4, activation=relu), Dense(4, 4, activation=relu)])
    x = minicnn.Input((4,))
    with pytest.raises(ValueError, match="appears twice"):
        minicnn.Model(x, shared(shared(x)))


# --------------------------------------------------------------------------- per_sample

class CentreUndeclared(Layer):
    """x minus the batch mean, without saying that it mixes samples."""

    def forward(self, x):
        return x - x.mean(axis=0, keepdims=True)

    def backward(self, grad_out):
        return grad_out - grad_out.mean(axis=0, keepdims=True)


def test_a_layer_that_does_not_declare_per_sample_is_not_split(monkeypatch):
    if not parallel.blas.can_set_threads():
        pytest.skip("OpenBLAS's thread count cannot be set here: batches are never split")
    monkeypatch.setattr(parallel, "MIN_SLICE", 1)
    minicnn.manual_seed(0)
    model = minicnn.Sequential([Flatten(), CentreUndeclared(), Dense(6, 2)]).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((8, 6)) + np.arange(8)[:, None]
    assert parallel.split_count(model, x, 2) == 1
    model.workers = 2
    two = model.forward(x)
    model.workers = 1
    np.testing.assert_allclose(two, model.forward(x), rtol=1e-12)
