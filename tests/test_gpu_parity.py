"""CuPy against NumPy on the same weights and input: logits and every gradient agree within
float32 tolerance. Skipped, with the reason, where no GPU is usable."""
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
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)
from minicnn.training import SGD, SoftmaxCrossEntropy

pytestmark = pytest.mark.gpu


def _ref_cnn():
    return minicnn.Sequential([
        Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2), Conv2D(32, 64, 3, padding=1), ReLU(),
        MaxPool2D(2), Flatten(), Dense(3136, 128, activation="relu"), Dense(128, 10)],
        input_shape=(1, 28, 28))


def _graph():
    x = minicnn.Input((3, 9, 9))
    h = Conv2D(3, 8, (3, 2), stride=2, padding=1, dilation=1)(x)
    a = ReLU()(BatchNorm2D(8)(h))
    b = Conv2D(8, 8, 3, padding=2, dilation=2)(a)
    r = Add()(a, b)
    c = Concatenate()(r, MaxPool2D(3, stride=1, padding=1)(h))
    p = AvgPool2D(2, stride=1)(c)
    y = Dense(16, 5)(GlobalAvgPool2D()(p))
    return minicnn.Model(x, y)


def _winograd():
    """Winograd F(2x2, 3x3) convolutions: an even and an odd output size."""
    return minicnn.Sequential([
        Conv2D(3, 8, 3, padding=1, algorithm="winograd"), ReLU(),
        Conv2D(8, 4, 3, algorithm="winograd"), Flatten(), Dense(4 * 6 * 5, 5)],
        input_shape=(3, 8, 7))


def _grads_on(model, name, x, labels):
    backend.set_backend(name)
    model.to(name)
    model.zero_grad()
    loss = SoftmaxCrossEntropy()
    logits = model.forward(backend.to_backend(x), training=True)
    value = loss.forward(logits, backend.to_backend(labels))
    dx = model.backward(loss.backward(), input_grad=True)
    grads = [backend.to_numpy(p.grad) for p in model.parameters()]
    return backend.to_numpy(logits), float(value), backend.to_numpy(dx), grads


@pytest.mark.parametrize("build,shape", [(_ref_cnn, (16, 1, 28, 28)), (_graph, (4, 3, 9, 9)),
                                         (_winograd, (4, 3, 8, 7))])
def test_cupy_matches_numpy(build, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    minicnn.manual_seed(0)
    model = build()
    labels = rng.integers(0, model.forward(x[:1]).shape[1], shape[0])
    try:
        ref = _grads_on(model, "numpy", x, labels)
        got = _grads_on(model, "cupy", x, labels)
    finally:
        backend.set_backend("numpy")
        model.to("numpy")
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert got[1] == pytest.approx(ref[1], rel=1e-5)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-4, atol=1e-5)
    for g, r in zip(got[3], ref[3]):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4)


def test_training_steps_on_cupy_follow_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 32)
    weights = {}
    for name in ("numpy", "cupy"):
        backend.set_backend(name)
        try:
            minicnn.manual_seed(0)
            model = _ref_cnn()
            opt = SGD(model.parameters(), 0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
            loss = SoftmaxCrossEntropy()
            xb, yb = backend.to_backend(x), backend.to_backend(labels)
            for _ in range(3):
                opt.zero_grad()
                loss.forward(model.forward(xb, training=True, check=False), yb)
                model.backward(loss.backward(), input_grad=False)
                opt.step()
            weights[name] = [backend.to_numpy(p.data) for p in model.parameters()]
        finally:
            backend.set_backend("numpy")
    for a, b in zip(weights["cupy"], weights["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
