"""Arrays decide: once a model exists, training and inference use its arrays' module only.

The global backend (``backend.xp``) is the default for *new* parameters and data. To prove that
nothing else reads it, these tests build the model first, then replace the global module with
one that raises on any use, and run a training step and ``no_grad`` inference.
"""
import numpy as np
import pytest

import minicnn
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
    MaxPool2D,
    ReLU,
)
from minicnn.training import SGD, MSELoss, SoftmaxCrossEntropy


class _NoGlobalModule:
    """Stands in for the global array module: any use is a bug."""

    def __getattr__(self, name):
        raise AssertionError(f"the global backend module was used (xp.{name}) after the model "
                             "was built: arrays must decide")


def _sequential():
    return minicnn.Sequential([
        Conv2D(1, 4, 3, padding=1), BatchNorm2D(4), ReLU(), MaxPool2D(2),
        Conv2D(4, 6, 3, padding=1), ReLU(), AvgPool2D(2), Dropout(0.3),
        Flatten(), Dense(6 * 2 * 2, 8, activation="tanh"), Dense(8, 3, activation="sigmoid"),
    ], input_shape=(1, 8, 8))


def _graph():
    x = minicnn.Input((1, 8, 8))
    h = ReLU()(BatchNorm2D(4)(Conv2D(1, 4, 3, padding=1)(x)))
    r = Add()(h, ReLU()(Conv2D(4, 4, 3, padding=1)(h)))
    c = Concatenate()(r, MaxPool2D(3, stride=1, padding=1)(h))
    d = Dropout(0.2)(GlobalAvgPool2D()(c))
    return minicnn.Model(x, Dense(8, 3, activation="leaky_relu")(d))


@pytest.mark.parametrize("build", [_sequential, _graph])
@pytest.mark.parametrize("nesterov", [False, True])
def test_training_and_inference_never_read_the_global_module(build, nesterov, monkeypatch):
    minicnn.manual_seed(0)
    model = build()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    before = [p.data.copy() for p in model.parameters()]
    monkeypatch.setattr(backend, "xp", _NoGlobalModule())
    for loss in (SoftmaxCrossEntropy(), MSELoss()):
        target = labels if isinstance(loss, SoftmaxCrossEntropy) else \
            np.eye(3, dtype=np.float32)[labels]
        for _ in range(2):
            opt.zero_grad()
            loss.forward(model.forward(x, training=True), target)
            model.backward(loss.backward())
            opt.step()
    with minicnn.no_grad():
        out = model.forward(x, training=False)
    assert out.shape == (40, 3) and np.isfinite(out).all()
    assert any(not np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    evaluation = model.evaluate((x, labels))                 # the helpers too
    assert 0.0 <= evaluation.accuracy <= 1.0
    assert model.predict(x).shape == (40, 3)


def test_get_array_module():
    a = np.zeros(2)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(None, 3, a) is np
    assert backend.get_array_module() is np
