"""Tests for minicnn.train: a short real-MNIST run reaches a stated accuracy; seeded runs repeat;
evaluate/predict; NaN losses and Ctrl-C stop training cleanly."""
from __future__ import annotations

import math
import signal
import warnings

import numpy as np
import pytest
from conftest import mnist_root

import minicnn
from minicnn import data, training, zoo
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.training import evaluation
from minicnn.training import loop as train

# Measured: 0.897 with this recipe (seeds 0 and 1); asserted with a margin.
SHORT_RUN_ACCURACY = 0.85


@pytest.fixture(scope="module")
def mnist():
    root = mnist_root()
    from minicnn.data.datasets import load_mnist
    return load_mnist(root, download=False)


def small_model() -> Sequential:
    return Sequential([Conv2D(1, 4, 3), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.2),
                       Dense(100, 3)], input_shape=(1, 12, 12))


def toy_data(n: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 100, (n, 12, 12)).astype(np.uint8)
    x[np.arange(n), 4 * y, 4 * y] = 255                      # a learnable pattern
    return x, y


@pytest.mark.slow
def test_short_mnist_run_reaches_accuracy(mnist):
    (x, y), (xt, yt) = mnist
    minicnn.manual_seed(0)
    model = zoo.build_model("ref-cnn")
    loader = data.DataLoader(x[:4000], y[:4000], batch_size=64, seed=0,
                             transform=data.Normalize(0.1307, 0.3081))
    opt = training.make_optimizer(model)
    schedule = training.make_schedule("cosine", 0.05, len(loader))
    history = model.fit(loader, 1, opt, schedule=schedule, val_data=(xt[:2000], yt[:2000]),
                        progress=False)
    record = history[0]
    assert set(record) >= {"epoch", "step", "lr", "train_loss", "train_acc", "val_loss",
                           "val_acc", "seconds", "images_per_s"}
    assert record["step"] == len(loader) == 63
    assert record["val_acc"] >= SHORT_RUN_ACCURACY, record
    assert record["train_loss"] < 1.0
    # evaluate() on the same pair with the same transform agrees with the history
    result = model.evaluate((xt[:2000], yt[:2000]), transform=loader.transform)
    assert result.accuracy == record["val_acc"]
    assert math.isclose(result.loss, record["val_loss"], rel_tol=1e-6)


def _seeded_losses(seed: int) -> list[float]:
    minicnn.manual_seed(seed)
    model = small_model()
    opt = minicnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = train.fit(model, toy_data(), 3, opt, batch_size=32, seed=seed, progress=False,
                        log_every=4)
    return history["train_loss"]


def test_seeded_runs_repeat_exactly():
    a, b = _seeded_losses(3), _seeded_losses(3)
    assert a == b
    assert _seeded_losses(4) != a
    assert a[-1] < a[0]


def test_schedule_sets_lr_each_step_and_history_shape():
    minicnn.manual_seed(0)
    model = small_model()
    opt = minicnn.optim.SGD(model.parameters(), lr=1.0)
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.01 / (1 + step)
    history = model.fit(toy_data(100), 2, opt, schedule=schedule, batch_size=25,
                        val_data=toy_data(30, seed=1), progress=False)
    assert seen == list(range(8))
    assert history["lr"] == [0.01 / 4, 0.01 / 8]
    assert history["epoch"] == [1, 2] and history["step"] == [4, 8]
    assert len(history) == 2 and history.stopped is None
    assert all(0 <= a <= 1 for a in history["val_acc"] + history["train_acc"])


def test_evaluate_and_predict():
    minicnn.manual_seed(0)
    model = small_model()
    x, y = toy_data(50)
    model.train(True)
    with pytest.warns(UserWarning, match="Sequential has no input transform"):
        out = evaluation.predict(model, x, batch_size=16)      # uint8 pixels, never fitted
    assert out.shape == (50, 3) and out.dtype == np.float32
    assert model.training                                   # mode restored
    full = model.forward(data.ToFloat()(x[:, None]), training=False)
    assert np.allclose(out, full, atol=1e-6)
    loss, accuracy = model.evaluate((x, y), batch_size=16)
    assert accuracy == np.mean(np.argmax(full, axis=1) == y)
    expected = minicnn.losses.SoftmaxCrossEntropy().forward(full, y)
    assert math.isclose(loss, float(expected), rel_tol=1e-5)
    # a shuffled loader is read in order, in predict's batches; at the batch size used above
    # the matrix products are the same, so the bits are (another one may round differently)
    assert np.array_equal(model.predict(data.DataLoader(x, y, batch_size=7), batch_size=16), out)


def test_confusion_matrix():
    m = evaluation.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_nan_loss_stops_with_epoch_and_step_keeping_last_checkpoint(tmp_path):
    minicnn.manual_seed(0)
    model = small_model()
    opt = minicnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = tmp_path / "last.npz"
    # a sane first epoch (5 steps), then an absurd learning rate for the 8th step (epoch 2,
    # step 3): the loss of the step after it is the first that is not finite
    schedule = lambda step: 0.01 if step < 7 else 1e30          # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # overflow on the way to NaN
        with pytest.raises(train.TrainingError) as info:
            train.fit(model, toy_data(160), 5, opt, batch_size=32, schedule=schedule,
                      checkpoint=path, progress=False)
    message = str(info.value)
    assert "epoch 2, step 4 of 5 (global step 9)" in message, message
    assert ("nan" in message or "inf" in message) and str(path) in message
    assert len(info.value.history) == 1
    kept = minicnn.load(path)
    assert all(np.isfinite(p.data).all() for p in kept.parameters())
    assert minicnn.checkpoint.load_checkpoint(path).meta["training"]["epoch"] == 1


def test_ctrl_c_saves_a_checkpoint_and_returns(tmp_path):
    minicnn.manual_seed(0)
    model = small_model()
    opt = minicnn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = tmp_path / "last.npz"

    class CtrlC:
        def on_step_end(self, step):
            if step == 3:
                signal.raise_signal(signal.SIGINT)
    history = train.fit(model, toy_data(160), 2, opt, batch_size=32, callbacks=[CtrlC()],
                        checkpoint=path, progress=False)
    assert history.stopped == "interrupted" and len(history) == 0
    meta = minicnn.checkpoint.load_checkpoint(path).meta["training"]
    assert (meta["epoch"], meta["step"], meta["partial"]["position"]) == (0, 3, 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_train_data():
    with pytest.raises(TypeError, match="DataLoader or an \\(x, y\\) pair"):
        train.fit(small_model(), "nope", 1, minicnn.optim.SGD(small_model().parameters(), 0.1))
