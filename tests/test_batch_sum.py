"""Cross-replica batch sums: a model with BatchNorm splits its batch among threads and still
normalises with the whole batch's statistics (minicnn.core.batch_sum)."""
import threading
import time

import numpy as np
import pytest

import minicnn
from minicnn.core.batch_sum import ReplicaGroup, batch_sum, replica_count, replica_scope
from minicnn.layers import (
    Add,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    ReLU,
)
from minicnn.testing import LayerContractError, check_layer
from minicnn.training import SoftmaxCrossEntropy, parallel


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_SLICE", 1)


def _in_threads(count, fn):
    group, results = ReplicaGroup(count), [None] * count

    def member(rank):
        try:
            with replica_scope(group, rank):
                results[rank] = fn(rank)
        except BaseException as exc:
            group.abort()
            results[rank] = exc

    threads = [threading.Thread(target=member, args=(r,)) for r in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a replica is still waiting"
    return results


def test_batch_sum_outside_a_split_is_the_partial_itself():
    a = np.arange(3.0)
    assert batch_sum(a) is a
    assert batch_sum((a, 5))[1] == 5


def test_replica_count_is_the_group_size_in_each_replica_and_one_outside():
    assert replica_count() == 1
    assert _in_threads(3, lambda rank: replica_count()) == [3, 3, 3]
    assert replica_count() == 1


def test_all_sum_adds_every_replica_in_rank_order_and_is_reusable():
    def work(rank):
        first = batch_sum((np.full(2, rank + 1.0), rank))
        second = batch_sum(np.array([10.0 * rank]))
        return first, second

    for (arrays, count), second in _in_threads(3, work):
        np.testing.assert_array_equal(arrays, [6.0, 6.0])
        assert count == 0 + 1 + 2
        np.testing.assert_array_equal(second, [30.0])


def test_back_to_back_sums_never_read_a_slot_the_next_sum_overwrote():
    # each replica moves on to the next sum as soon as it has its total; a replica that
    # lags (sleeps) must still read this round's partials, not the next round's
    rounds = 200

    def work(rank):
        rng = np.random.default_rng(rank)
        totals = []
        for r in range(rounds):
            if rng.random() < 0.1:
                time.sleep(0.0005)
            totals.append(batch_sum(np.array([100.0 * r + rank])))
        return totals

    expected = [300.0 * r + 3 for r in range(rounds)]       # ranks 0 + 1 + 2
    for totals in _in_threads(3, work):
        assert [float(t[0]) for t in totals] == expected


def test_a_failing_replica_releases_the_others():
    def work(rank):
        if rank == 1:
            raise RuntimeError("boom")
        return batch_sum(np.ones(1))

    results = _in_threads(2, work)
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[0], threading.BrokenBarrierError)


def _bn_sequential():
    return minicnn.Sequential([Conv2D(2, 4, 3, padding=1, bias=False), BatchNorm2D(4), ReLU(),
                               Flatten(), Dense(4 * 6 * 6, 5), BatchNorm1D(5), ReLU(),
                               Dense(5, 3)], input_shape=(2, 6, 6))


def _bn_graph():
    x = minicnn.Input((2, 6, 6))
    h = ReLU()(BatchNorm2D(4)(Conv2D(2, 4, 3, padding=1)(x)))
    r = ReLU()(Add()(h, BatchNorm2D(4)(Conv2D(4, 4, 3, padding=1)(h))))
    return minicnn.Model(x, Dense(4, 3)(GlobalAvgPool2D()(r)))


def _step(model, x, labels):
    loss = SoftmaxCrossEntropy()
    model.zero_grad()
    out = model.forward(x, training=True)
    loss.forward(out, labels)
    dx = model.backward(loss.backward(), input_grad=True)
    state = [v.copy() for _, v in model.named_state()]
    return out, dx, [p.grad.copy() for p in model.parameters()], state


@pytest.mark.parametrize("build", [_bn_sequential, _bn_graph])
@pytest.mark.parametrize("workers,batch", [(2, 9), (3, 12)])
def test_a_model_with_batchnorm_splits_and_equals_the_whole_batch(build, workers, batch,
                                                                   small_slices):
    minicnn.manual_seed(0)
    whole_model, split_model = build().astype(np.float64), None
    import copy
    split_model = copy.deepcopy(whole_model)
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((batch, 2, 6, 6)), rng.integers(0, 3, batch)
    whole_model.workers, split_model.workers = 1, workers
    for _ in range(2):                      # twice: the running statistics move alike
        whole, split = _step(whole_model, x, labels), _step(split_model, x, labels)
    assert split_model._replicas.count == workers                 # it really split
    for a, b in zip(split[:2], whole[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for group in (2, 3):                    # parameter gradients; running statistics
        for a, b in zip(split[group], whole[group]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    with minicnn.no_grad():                 # evaluation: the running statistics, per sample
        np.testing.assert_allclose(split_model.forward(x, training=False),
                                   whole_model.forward(x, training=False), rtol=1e-10)


class _FailsInAReplica(Layer):
    per_sample = True

    def forward(self, x):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("boom in a replica")
        return x

    def backward(self, grad_out):
        return grad_out


def test_an_error_in_one_replica_does_not_leave_the_others_waiting(small_slices):
    """The main thread's replica waits at BatchNorm's batch_sum for the one that failed: the
    caller gets the real error, not a hang or a broken barrier."""
    model = minicnn.Sequential([Flatten(), _FailsInAReplica(), BatchNorm1D(4), Dense(4, 2)])
    model.workers = 2
    with pytest.raises(RuntimeError, match="boom in a replica"):
        model.forward(np.ones((8, 1, 2, 2), dtype=np.float32), training=True)


class ForgetsBatchSum(Layer):
    """Subtracts the batch mean but forgets batch_sum: wrong when split."""

    batch_sums = True

    def forward(self, x):
        self.save_for_backward(x.shape[0])
        return x - x.mean(axis=0, keepdims=True)

    def backward(self, grad_out):
        (n,) = self.pop_saved()
        return grad_out - grad_out.mean(axis=0, keepdims=True)


def test_check_layer_catches_a_batch_sums_claim_without_batch_sum():
    with pytest.raises(LayerContractError, match="rule 'batch sums'"):
        check_layer(ForgetsBatchSum(), (6, 3))
    check_layer(BatchNorm2D(3), (6, 3, 4, 4))              # the real one passes
    check_layer(BatchNorm1D(3), (6, 3))
