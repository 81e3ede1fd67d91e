"""One walk of the layer tree: a BatchNorm2D held anywhere (here an attribute of a user's block)
is saved, loaded, converted, shared with replicas and broadcast like one in ``model.layers``."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, Layer, ReLU
from minicnn.training import SoftmaxCrossEntropy, distributed, parallel


class Block(Layer):
    """conv -> bn -> relu, the BatchNorm2D an attribute (as a user writes a residual block)."""

    per_sample = True                 # its BatchNorm2D still keeps a training model whole

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2D(channels, channels, 3, padding=1)
        self.bn = BatchNorm2D(channels)
        self.act = ReLU()

    def forward(self, x):
        return self.act.forward(self.bn.forward(self.conv.forward(x)))

    def backward(self, grad_out):
        return self.conv.backward(self.bn.backward(self.act.backward(grad_out)))


def _model() -> minicnn.Sequential:
    minicnn.manual_seed(0)
    return minicnn.Sequential([Conv2D(1, 4, 3, padding=1), Block(4), Flatten(), Dense(64, 3)],
                              input_shape=(1, 4, 4))


def _train(model, steps: int = 3) -> None:
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.standard_normal((32, 1, 4, 4)).astype(np.float32) * 3 + 1
        loss = SoftmaxCrossEntropy()
        loss.forward(model.forward(x, training=True), rng.integers(0, 3, 32))
        model.backward(loss.backward())


def _stats(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in model.named_state()}


def test_the_walk_names_state_inside_a_block():
    model = _model()
    assert [name for name, _ in model.named_layers()] == [
        "", "conv2d_1", "block_1", "block_1.conv", "block_1.bn", "block_1.act", "flatten_1",
        "dense_1"]
    assert list(_stats(model)) == ["block_1.bn.running_mean", "block_1.bn.running_var"]
    assert [n for n, _ in model.named_parameters()][2:6] == [
        "block_1.conv.weight", "block_1.conv.bias", "block_1.bn.weight", "block_1.bn.bias"]


def test_built_in_state_names_are_those_of_earlier_files():
    model = minicnn.Sequential([Conv2D(1, 2, 3), BatchNorm2D(2),
                                minicnn.Sequential([BatchNorm2D(2)])])
    assert [n for n, _ in model.named_state()] == [
        "batchnorm2d_1.running_mean", "batchnorm2d_1.running_var",
        "sequential_1.batchnorm2d_1.running_mean", "sequential_1.batchnorm2d_1.running_var"]


def test_a_batchnorm_in_a_block_survives_save_load_and_load_weights(tmp_path):
    model = _model()
    _train(model)
    stats = _stats(model)
    assert not np.allclose(stats["block_1.bn.running_mean"], 0)
    minicnn.save(model, tmp_path / "m.npz")
    loaded = minicnn.load(tmp_path / "m.npz")
    for name, value in _stats(loaded).items():
        np.testing.assert_array_equal(value, stats[name])
    fresh = _model()
    minicnn.checkpoint.load_weights(fresh, tmp_path / "m.npz")
    for name, value in _stats(fresh).items():
        np.testing.assert_array_equal(value, stats[name])
    x = np.random.default_rng(5).standard_normal((4, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x, training=False),
                                  model.forward(x, training=False))


def test_astype_and_to_convert_state_inside_a_block():
    model = _model()
    _train(model, 1)
    before = _stats(model)
    model.astype(np.float64)
    assert all(v.dtype == np.float64 for _, v in model.named_state())
    model.to("numpy")
    for name, value in model.named_state():
        np.testing.assert_allclose(value, before[name], rtol=1e-7)


def test_replicas_use_the_models_current_running_statistics(monkeypatch):
    if not parallel.blas.can_set_threads():
        pytest.skip("OpenBLAS's thread count cannot be set here: batches are never split")
    monkeypatch.setattr(parallel, "MIN_SLICE", 1)
    model = _model().astype(np.float64)
    model.workers = 2
    x = np.random.default_rng(1).standard_normal((8, 1, 4, 4))
    _train_f64(model, 1)
    model.eval()
    model.forward(x)                                           # split: replicas made now
    assert parallel.split_count(model, x, 2) == 2 and model.__dict__.get("_replicas")
    _train_f64(model, 2)                                       # the stats move on
    split = model.forward(x)
    model.workers = 1
    np.testing.assert_allclose(split, model.forward(x), rtol=1e-12)


def _train_f64(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 1, 4, 4)) * 5 - 2
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x, training=True), rng.integers(0, 3, 32))
    model.backward(loss.backward())


def test_broadcast_state_reaches_a_batchnorm_in_a_block():
    class Root(distributed.Communicator):
        name, rank, size = "fake", 1, 2

        def broadcast(self, buf, root=0):
            buf[...] = 7.0
            return buf

    model = _model()
    distributed.broadcast_state(model, Root())
    assert all(np.all(v == 7.0) for _, v in model.named_state())


def test_resume_restores_a_batchnorm_in_a_block(tmp_path):
    from minicnn.training import SGD
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 1, 4, 4)) * 2 + 1).astype(np.float32)
    y = rng.integers(0, 3, 64)

    def run(epochs: int, path, resume: bool = False) -> dict[str, np.ndarray]:
        model = _model()
        model.fit((x, y), epochs=epochs, optimizer=SGD(model.parameters(), 0.05), batch_size=32,
                  seed=0, progress=False, checkpoint=path, resume=resume, workers=1)
        return _stats(model)

    whole = run(2, tmp_path / "whole.npz")
    run(1, tmp_path / "half.npz")
    resumed = run(2, tmp_path / "half.npz", resume=True)
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value)


class OldStyle(Layer):
    """A 0.1-style layer: its state through an overridden state_arrays(), not add_state."""

    per_sample = True

    def __init__(self):
        super().__init__()
        self.offset = np.zeros(3, np.float32)

    def state_arrays(self):
        return {"offset": self.offset}

    def forward(self, x):
        return x + self.offset

    def backward(self, grad_out):
        return grad_out


def test_a_layer_overriding_state_arrays_is_still_walked(tmp_path):
    model = minicnn.Sequential([OldStyle(), Dense(3, 2)], input_shape=(3,))
    model.layers[0].offset = np.array([1.0, 2.0, 3.0], np.float32)
    assert [n for n, _ in model.named_state()] == ["oldstyle_1.offset"]
    minicnn.save(model, tmp_path / "m.npz")
    np.testing.assert_array_equal(minicnn.load(tmp_path / "m.npz").layers[0].offset, [1, 2, 3])
