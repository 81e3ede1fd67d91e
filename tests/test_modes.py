"""Per-thread modes: ``no_grad`` and ``forward(training=...)`` belong to the thread that set
them, so inference in one thread never disturbs training in another."""
import threading

import numpy as np

import minicnn
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.layers.base import grad_enabled
from minicnn.training import SGD, SoftmaxCrossEntropy, parallel


def test_overlapping_no_grad_blocks_in_two_threads_restore_their_own_mode():
    """A enters, B enters, A leaves, B leaves: each sees only its own block, in that order."""
    steps = [threading.Event() for _ in range(4)]
    seen: dict[str, list[bool]] = {"a": [], "b": []}

    def a():
        with minicnn.no_grad():
            seen["a"].append(grad_enabled())
            steps[0].set()
            steps[1].wait(5)                         # B is inside its block now
        seen["a"].append(grad_enabled())             # A left; B is still inside
        steps[2].set()

    def b():
        steps[0].wait(5)                             # A is inside its block
        with minicnn.no_grad():
            steps[1].set()
            steps[2].wait(5)                         # A has left its block
            seen["b"].append(grad_enabled())
        seen["b"].append(grad_enabled())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a": [False, True], "b": [False, True]}
    assert grad_enabled()                            # this thread was never touched


def _model():
    minicnn.manual_seed(0)
    return minicnn.Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                               Dense(4 * 4 * 4, 3)], input_shape=(1, 8, 8))


def _train(model, x, y, steps, during_step=None):
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = SoftmaxCrossEntropy()
    for _ in range(steps):
        opt.zero_grad()
        loss.forward(model.forward(x, training=True), y)
        if during_step is not None:
            during_step()                            # inference between forward and backward
        model.backward(loss.backward())
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def test_inference_in_another_thread_does_not_change_training():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2 * parallel.MIN_SLICE, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, len(x))
    alone = _train(_model(), x, y, steps=6)

    model = _model()
    stop = threading.Event()
    inferred = []

    def infer():
        while not stop.is_set():
            with minicnn.no_grad():
                inferred.append(model.forward(x, training=False).shape)
            model.evaluate((x, y))                   # eval mode, no_grad, in this thread only

    def infer_once():                                # and once right inside a training step
        worker = threading.Thread(target=lambda: inferred.append(model.predict(x).shape))
        worker.start()
        worker.join(10)

    thread = threading.Thread(target=infer)
    thread.start()
    try:
        beside = _train(model, x, y, steps=6, during_step=infer_once)
    finally:
        stop.set()
        thread.join(10)
    assert inferred and all(s == (len(x), 3) for s in inferred)
    assert model.training
    for a, b in zip(beside, alone):
        np.testing.assert_array_equal(a, b)


def test_pool_threads_inherit_the_callers_modes(monkeypatch):
    """A split forward inside no_grad keeps nothing in any replica."""
    monkeypatch.setattr(parallel, "MIN_SLICE", 1)
    model = _model()
    model.workers = 2
    x = np.ones((4, 1, 8, 8), dtype=np.float32)
    model.forward(x, training=True)                  # builds the replicas (and saves)
    model.clear_cache()
    model.forward(x, training=True)
    model.backward(np.ones((4, 3), dtype=np.float32))
    with minicnn.no_grad():
        model.forward(x, training=False)
    replicas = model._replicas
    for twin in [model] + replicas.copies:
        assert all(layer.__dict__.get("_saved") is None for layer in twin.layers)
