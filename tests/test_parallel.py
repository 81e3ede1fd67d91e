"""minicnn.parallel: splitting a step among replicas in threads gives the full batch's result."""
import numpy as np
import pytest

import minicnn
from minicnn.layers import (
    Add,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)
from minicnn.training import SGD, SoftmaxCrossEntropy, parallel

REAL_MIN_SLICE_WORK = parallel.MIN_SLICE_WORK     # before conftest's fixture lifts it per test


def _sequential():
    return minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                               Dense(4 * 4 * 4, 3)], input_shape=(2, 8, 8))


def _graph():
    x = minicnn.Input((2, 8, 8))
    h = ReLU()(Conv2D(2, 4, 3, padding=1)(x))
    r = Add()(h, Conv2D(4, 4, 3, padding=1)(h))
    return minicnn.Model(x, Dense(4, 3)(GlobalAvgPool2D()(r)))


@pytest.fixture
def small_slices(monkeypatch):
    """Let tiny test batches split (the real threshold is there for speed only)."""
    monkeypatch.setattr(parallel, "MIN_SLICE", 1)


def _step(model, x, labels, input_grad=True):
    loss = SoftmaxCrossEntropy()
    model.zero_grad()
    out = model.forward(x, training=True)
    loss.forward(out, labels)
    dx = model.backward(loss.backward(), input_grad=input_grad)
    return out, dx, [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("build", [_sequential, _graph])
@pytest.mark.parametrize("workers,batch", [(2, 7), (3, 8), (4, 2)])
def test_split_step_equals_the_whole_batch(build, workers, batch, small_slices):
    minicnn.manual_seed(0)
    model = build().astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 2, 8, 8))
    labels = rng.integers(0, 3, batch)
    model.workers = 1
    whole = _step(model, x, labels)
    model.workers = workers
    split = _step(model, x, labels)
    assert model._replicas.count == min(workers, batch)       # it really split
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(split[1], whole[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(split[2], whole[2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert _step(model, x, labels, input_grad=False)[1] is None


def test_a_loop_written_by_hand_splits_at_the_default_threshold():
    """The README's loop (forward, loss, backward, step) gets the split without fit."""
    model = _sequential()
    model.workers = 2
    x = np.random.default_rng(0).standard_normal((2 * parallel.MIN_SLICE, 2, 8, 8))
    out, _, _ = _step(model, x.astype(np.float32), np.arange(len(x)) % 3)
    assert model._replicas.count == 2 and out.shape == (len(x), 3)
    model.forward(x[:2 * parallel.MIN_SLICE - 1].astype(np.float32))
    assert model._saved == (None, None)                  # too small a batch: not split


def test_gradients_accumulate_across_split_steps(small_slices):
    minicnn.manual_seed(0)
    model = _sequential().astype(np.float64)
    x = np.random.default_rng(4).standard_normal((6, 2, 8, 8))
    labels = np.arange(6) % 3
    model.workers = 1
    once = _step(model, x, labels)[2]
    model.workers = 2
    loss = SoftmaxCrossEntropy()
    model.zero_grad()
    for _ in range(2):                               # no zero_grad in between
        loss.forward(model.forward(x, training=True), labels)
        model.backward(loss.backward())
    for p, g in zip(model.parameters(), once):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-10, atol=1e-12)


def test_replicas_follow_optimizer_updates_and_reassigned_parameters(small_slices):
    minicnn.manual_seed(0)
    model = _sequential()
    model.workers = 2
    x = np.random.default_rng(2).standard_normal((6, 2, 8, 8)).astype(np.float32)
    opt = SGD(model.parameters(), 0.1, momentum=0.9)
    loss = SoftmaxCrossEntropy()
    for _ in range(2):
        opt.zero_grad()
        loss.forward(model.forward(x, training=True), np.arange(6) % 3)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
    split = model.forward(x, training=False)
    model.workers = 1
    np.testing.assert_allclose(split, model.forward(x, training=False), rtol=1e-6, atol=1e-6)
    model.workers = 2
    model.astype(np.float64)                         # new arrays: replicas must follow
    x64 = x.astype(np.float64)
    split = model.forward(x64, training=False)
    model.workers = 1
    np.testing.assert_allclose(split, model.forward(x64, training=False), rtol=1e-12)


class _Custom(minicnn.layers.Layer):
    """A user's layer that treats samples independently, and says so."""

    per_sample = True

    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


def test_only_models_whose_layers_treat_samples_independently_or_by_batch_sums_are_split():
    x = np.ones((64, 1, 2, 2), dtype=np.float32)
    with_dropout = minicnn.Sequential([Flatten(), Dropout(0.5), Dense(4, 2)])
    with_bn = minicnn.Sequential([BatchNorm2D(1), Flatten(), Dense(4, 2)])
    custom = minicnn.Sequential([_Custom(), Flatten(), Dense(4, 2)])
    assert parallel.split_count(with_dropout, x, 2) == 2
    assert parallel.split_count(with_bn, x, 2) == 2     # its batch sums add over the replicas
    assert parallel.split_count(custom, x, 2) == 2
    undeclared = minicnn.Sequential([_Undeclared(), Flatten(), Dense(4, 2)])
    assert parallel.split_count(undeclared, x, 2) == 1         # not split unless declared
    with_dropout.eval(), with_bn.eval()             # in eval mode both treat samples alone
    assert parallel.split_count(with_dropout, x, 2) == 2
    assert parallel.split_count(with_bn, x, 2) == 2
    assert parallel.split_count(custom, x, 1) == 1
    assert parallel.split_count(custom, x[:2 * parallel.MIN_SLICE - 1], 2) == 1


def test_a_split_step_with_dropout_is_reproducible(small_slices):
    half = np.random.default_rng(6).standard_normal((4, 2, 8, 8)).astype(np.float32)
    x = np.concatenate([half, half])                 # both replicas get the same images
    runs = []
    for _ in range(2):
        minicnn.manual_seed(3)
        model = minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), Dropout(0.5), Flatten(),
                                    Dense(256, 3)], input_shape=(2, 8, 8))
        model.workers = 2
        opt = SGD(model.parameters(), 0.1)
        outs = []
        for _ in range(3):
            out, _, _ = _step(model, x, np.arange(8) % 3)
            opt.step()
            outs.append(out)
        assert model._replicas.count == 2
        runs.append((outs, [p.data.copy() for p in model.parameters()]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_array_equal(a, b)
    first = runs[0][0][0]
    assert not np.allclose(first[:4], first[4:])     # but each replica drew its own masks
    with minicnn.no_grad():                          # eval: no dropout, split equals whole
        model.eval()
        split = model.forward(x)
        model.workers = 1
        np.testing.assert_allclose(model.forward(x), split, rtol=1e-6)


def test_nested_models_split_once_at_the_top(small_slices):
    inner = minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU()], input_shape=(2, 8, 8))
    model = minicnn.Sequential([inner, MaxPool2D(2), Flatten(), Dense(64, 3)],
                               input_shape=(2, 8, 8))
    model.workers = 2
    x = np.random.default_rng(5).standard_normal((8, 2, 8, 8)).astype(np.float32)
    _step(model, x, np.arange(8) % 3)
    assert model._replicas.count == 2 and "_replicas" not in vars(inner)


class _Undeclared(minicnn.layers.Layer):
    def forward(self, x):
        return x

    def backward(self, grad_out):
        return grad_out


class _Fails(_Custom):
    def forward(self, x):
        if len(x) < 8:                               # only the replicas' slices fail
            raise RuntimeError("boom in a replica")
        return x


def test_an_error_in_a_replica_thread_reaches_the_caller(small_slices):
    model = minicnn.Sequential([_Fails(), Flatten(), Dense(4, 2)])
    model.workers = 2
    with pytest.raises(RuntimeError, match="boom in a replica"):
        model.forward(np.ones((8, 1, 2, 2), dtype=np.float32), training=True)


def test_blas_thread_count_is_restored_after_a_split_step(small_slices):
    from minicnn.kernels import blas
    if not blas.can_set_threads():
        pytest.skip("OpenBLAS's thread count cannot be set here")
    before = blas.set_blas_threads(2)
    try:
        model = _sequential()
        model.workers = 2
        _step(model, np.ones((8, 2, 8, 8), dtype=np.float32), np.arange(8) % 3)
        assert blas.set_blas_threads(2) == 2
    finally:
        blas.set_blas_threads(before)


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



class _BatchCentre(minicnn.layers.Layer):
    """x - mean over the batch: mixes samples, as a user's layer may."""

    def __init__(self, in_init: bool):
        super().__init__()
        if in_init:
            self.per_sample = False

    def forward(self, x):
        return x - x.mean(axis=0, keepdims=True)

    def backward(self, grad_out):
        return grad_out - grad_out.mean(axis=0, keepdims=True)


class _BatchCentreInClass(_BatchCentre):
    per_sample = False


@pytest.mark.parametrize("layer", [_BatchCentre(in_init=True), _BatchCentreInClass(False)],
                         ids=["in __init__", "in the class body"])
def test_a_layer_that_mixes_samples_is_not_split(small_slices, layer):
    x = np.zeros((8, 2, 8, 8), np.float32)
    model = minicnn.Sequential([layer, Flatten(), Dense(128, 3)], input_shape=(2, 8, 8))
    plain = minicnn.Sequential([Flatten(), Dense(128, 3)], input_shape=(2, 8, 8))
    assert parallel.split_count(plain, x, 2) == 2 or not parallel.blas.can_set_threads()
    assert parallel.split_count(model, x, 2) == 1


def test_work_per_sample_counts_the_input_and_twice_each_output():
    model = _sequential()           # conv 4x8x8, relu 4x8x8, pool 4x4x4, flatten 64, dense 3
    assert parallel.work_per_sample(model, (2, 8, 8)) == 2 * 64 + 2 * (256 + 256 + 64 + 64 + 3)
    graph = _graph()                # conv, relu, conv, add: 256 each; pool 4, dense 3
    assert parallel.work_per_sample(graph, (2, 8, 8)) == 128 + 2 * (4 * 256 + 4 + 3)
    assert parallel.work_per_sample(model, (3, 8, 8)) == 0        # does not fit: no estimate
    assert parallel.work_per_sample(graph, (2, 9, 9)) == 0


def test_a_batch_too_small_to_pay_runs_whole(monkeypatch):
    """Below MIN_SLICE_WORK elements per replica the split's hand-offs cost more than it saves
    (examples/split_threshold.py): the step runs whole; above, it is split."""
    monkeypatch.setattr(parallel, "MIN_SLICE_WORK", REAL_MIN_SLICE_WORK)
    model = minicnn.Sequential([ReLU(), Dense(512, 10)])
    small = np.ones((64, 512), dtype=np.float32)              # 32 * (512 + 2 * 522) per replica
    assert parallel.work_per_sample(model, (512,)) * 32 < parallel.MIN_SLICE_WORK
    assert parallel.split_count(model, small, 2) == 1
    model.forward(small)
    assert model._saved == (None, None)                            # ran whole
    large = np.ones((2048, 512), dtype=np.float32)                 # 1024 * 1556 per replica
    assert parallel.split_count(model, large, 2) == 2
    wide = minicnn.Sequential([ReLU(), Flatten()])
    assert parallel.split_count(wide, np.ones((32, 16, 64, 64), np.float32), 2) == 2


def test_replicas_copy_their_outputs_into_one_array_in_batch_order(small_slices):
    model = minicnn.Sequential([ReLU(), Dense(6, 2)]).astype(np.float64)
    x = np.random.default_rng(3).standard_normal((9, 6))
    model.workers = 1
    whole = model.forward(x)
    dx_whole = model.backward(np.ones_like(whole), input_grad=True)
    model.workers = 3
    split = model.forward(x)
    assert model._saved[0].count == 3
    np.testing.assert_allclose(split, whole, rtol=1e-12, atol=0)
    np.testing.assert_allclose(model.backward(np.ones_like(split), input_grad=True), dx_whole,
                               rtol=1e-12, atol=0)


def test_gathered_slices_that_do_not_fit_are_concatenated():
    gathered = parallel.Gathered(5)
    parts = [np.arange(6.0).reshape(3, 2), np.arange(4, dtype=np.float32).reshape(2, 2)]
    gathered.put(slice(0, 3), parts[0])
    gathered.put(slice(3, 5), parts[1])                # another dtype: not copied in
    out = gathered.result(parts)
    assert out.shape == (5, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.concatenate(parts))
    in_order = parallel.Gathered(5)
    in_order.put(slice(3, 5), parts[0][:2])              # the second slice first
    in_order.put(slice(0, 3), parts[0])
    np.testing.assert_array_equal(in_order.result([parts[0], parts[0][:2]]),
                                  np.concatenate([parts[0], parts[0][:2]]))
