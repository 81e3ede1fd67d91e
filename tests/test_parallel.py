"""minicnn.parallel: splitting a step among replicas in threads gives the full batch's result."""
import numpy as np
import pytest

import minicnn
from minicnn import parallel
from minicnn.layers import (Add, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                            MaxPool2D, ReLU)
from minicnn.losses import SoftmaxCrossEntropy
from minicnn.optim import SGD


def _sequential():
    return minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                               Dense(4 * 4 * 4, 3)], input_shape=(2, 8, 8))


def _graph():
    x = minicnn.Input((2, 8, 8))
    h = ReLU()(Conv2D(2, 4, 3, padding=1)(x))
    r = Add()(h, Conv2D(4, 4, 3, padding=1)(h))
    return minicnn.Model(x, Dense(4, 3)(GlobalAvgPool2D()(r)))


@pytest.mark.parametrize("build", [_sequential, _graph])
@pytest.mark.parametrize("workers,batch", [(2, 7), (3, 8), (4, 2)])
def test_split_step_equals_the_whole_batch(build, workers, batch):
    minicnn.manual_seed(0)
    model = build().astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 2, 8, 8))
    labels = rng.integers(0, 3, batch)
    loss = SoftmaxCrossEntropy()

    def step(net):
        model.zero_grad()
        out = net.forward(x, training=True)
        loss.forward(out, labels)
        dx = net.backward(loss.backward())
        return out, dx, [p.grad.copy() for p in model.parameters()]

    whole = step(model)
    net = parallel.DataParallel(model, workers)
    try:
        split = step(net)
    finally:
        net.close()
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(split[1], whole[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(split[2], whole[2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_replicas_follow_optimizer_updates_and_reassigned_parameters():
    minicnn.manual_seed(0)
    model = _sequential()
    net = parallel.DataParallel(model, 2)
    x = np.random.default_rng(2).standard_normal((6, 2, 8, 8)).astype(np.float32)
    try:
        opt = SGD(model.parameters(), 0.1, momentum=0.9)
        loss = SoftmaxCrossEntropy()
        for _ in range(2):
            opt.zero_grad()
            loss.forward(net.forward(x, training=True), np.arange(6) % 3)
            net.backward(loss.backward(), input_grad=False)
            opt.step()
        np.testing.assert_allclose(net.forward(x, training=False), model.forward(x),
                                   rtol=1e-6, atol=1e-6)
        model.astype(np.float64)                     # new arrays: replicas must follow
        np.testing.assert_allclose(net.forward(x.astype(np.float64), training=False),
                                   model.forward(x.astype(np.float64)), rtol=1e-12)
    finally:
        net.close()


class _Custom(minicnn.layers.Layer):
    """A user's layer: minicnn cannot know whether it is safe to run in two threads."""

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


def test_models_with_state_randomness_or_unknown_layers_are_not_split():
    with_dropout = minicnn.Sequential([Flatten(), Dropout(0.5), Dense(4, 2)])
    with_bn = minicnn.Sequential([BatchNorm2D(1), Flatten(), Dense(4, 2)])
    assert parallel.data_parallel(with_dropout, 2) is with_dropout
    assert parallel.data_parallel(minicnn.Sequential([_Custom(), Flatten(), Dense(4, 2)]),
                                  2).__class__ is minicnn.Sequential
    assert parallel.data_parallel(with_bn, 2) is with_bn
    model = _sequential()
    assert parallel.data_parallel(model, 1) is model
    assert parallel.data_parallel(model, 2, batch_size=2 * parallel.MIN_SLICE - 1) is model


def test_fit_with_workers_matches_fit_without():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (256, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, 256)
    results = []
    for workers in (1, 2):
        minicnn.manual_seed(0)
        model = minicnn.Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), Flatten(),
                                    Dense(4 * 8 * 8, 3)], input_shape=(1, 8, 8))
        opt = SGD(model.parameters(), 0.05, momentum=0.9)
        history = model.fit((x, y), epochs=2, optimizer=opt, batch_size=128, seed=0,
                            progress=False, workers=workers)
        results.append(([r["train_loss"] for r in history.records],
                        [p.data.copy() for p in model.parameters()]))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

