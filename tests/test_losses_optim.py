"""Losses (values, stability, gradients) and the SGD optimizer, schedules and seeding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from conftest import randn

import minicnn
from minicnn.core import random
from minicnn.layers import Conv2D, Dense, Parameter
from minicnn.models import Sequential
from minicnn.testing.gradient_check import numeric_gradient, relative_error
from minicnn.training import (
    SGD,
    ConstantLR,
    CosineLR,
    MSELoss,
    SoftmaxCrossEntropy,
    StepLR,
)

TOL = 1e-6


def labels_for(n, k, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


# =========================================================================== losses

@pytest.mark.parametrize("n,k", [(1, 2), (5, 3), (8, 10)])
def test_cross_entropy_equals_naive_mean_negative_log_softmax(n, k):
    logits, labels = 3 * randn(n, k), labels_for(n, k)
    loss = SoftmaxCrossEntropy().forward(logits, labels)
    assert np.ndim(loss) == 0
    assert float(loss) == pytest.approx(ref.softmax_cross_entropy(logits, labels), rel=1e-12)
    # and the unstabilised textbook formula where it does not overflow
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert float(loss) == pytest.approx(-np.mean(np.log(p[np.arange(n), labels])), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 - 2.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 2, 1])
    loss_fn = SoftmaxCrossEntropy()
    # no overflow, no inf - inf, no log(0); exp(-2e4) underflowing to 0 is fine
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss = float(loss_fn.forward(logits, labels))
        grad = loss_fn.backward()
    expected = (0.0 + (2.0 + math.log1p(math.exp(-2.0))) + math.log(3.0)) / 3
    assert loss == pytest.approx(expected, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert np.isfinite(grad).all() and grad.dtype == dtype
    np.testing.assert_allclose(grad, (ref.softmax(logits) - np.eye(3)[labels]) / 3, atol=1e-7)


@pytest.mark.parametrize("n,k", [(1, 3), (4, 5)])
def test_cross_entropy_backward_is_softmax_minus_onehot_over_n(n, k):
    logits, labels = randn(n, k), labels_for(n, k, seed=1)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1
    np.testing.assert_allclose(grad, (ref.softmax(logits) - onehot) / n, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)


def loss_gradcheck(loss_fn, prediction, target, eps=1e-4):
    """Central differences of the scalar loss w.r.t. every prediction element.

    Both losses are smooth (MSE is quadratic: its central difference is exact), so the step
    only trades rounding noise (~1/eps) against truncation error (~eps^2). With eps = 1e-6 the
    noise alone reaches ~1.7e-6 relative on small-gradient elements; with 1e-4 the worst error
    over these cases is ~2e-8."""
    prediction = prediction.copy()
    loss_fn.forward(prediction, target)
    analytic = loss_fn.backward().reshape(-1).copy()
    numeric = numeric_gradient(lambda: float(loss_fn.forward(prediction, target)), prediction,
                               list(range(prediction.size)), eps)
    return relative_error(analytic, numeric)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,k", [(1, 2), (3, 4), (6, 10)])
def test_gradcheck_cross_entropy(seed, n, k):
    err = loss_gradcheck(SoftmaxCrossEntropy(), 2 * randn(n, k, seed=seed),
                         labels_for(n, k, seed=seed))
    assert err < TOL


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (2, 3, 2, 2)])
def test_gradcheck_mse(seed, shape):
    err = loss_gradcheck(MSELoss(), randn(*shape, seed=seed), randn(*shape, seed=seed + 10))
    assert err < TOL


def test_loss_gradcheck_helper_detects_a_wrong_gradient():
    class HalfMSE(MSELoss):
        def backward(self):
            return super().backward() / 2
    assert loss_gradcheck(HalfMSE(), randn(3, 2), randn(3, 2, seed=1)) > 0.4


def test_mse_values_and_gradient():
    p, t = randn(3, 4), randn(3, 4, seed=1)
    loss_fn = MSELoss()
    assert float(loss_fn.forward(p, t)) == pytest.approx(np.mean((p - t) ** 2), rel=1e-14)
    np.testing.assert_allclose(loss_fn.backward(), 2 * (p - t) / 12, rtol=1e-14)
    # integer targets are converted to the prediction's dtype
    assert float(MSELoss().forward(np.zeros((2, 2)), np.ones((2, 2), dtype=np.int64))) == 1.0


def test_loss_input_errors():
    ce = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ce.forward(randn(2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        ce.forward(randn(2, 3), np.array([-1, 0]))
    with pytest.raises(TypeError, match="integer class labels"):
        ce.forward(randn(2, 3), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\)"):
        ce.forward(randn(2, 3), np.array([[0], [1]]))
    with pytest.raises(ValueError, match="2-D"):
        ce.forward(randn(2, 3, 1), np.array([0, 1]))
    with pytest.raises(TypeError, match="floating-point"):
        ce.forward(np.ones((2, 3), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(ValueError, match="backward called before forward"):
        SoftmaxCrossEntropy().backward()
    with pytest.raises(ValueError, match="backward called before forward"):
        MSELoss().backward()
    with pytest.raises(ValueError, match=r"target of shape \(2, 3\)"):
        MSELoss().forward(randn(2, 3), randn(3, 2))


# =========================================================================== SGD

SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.02, momentum=0.8, weight_decay=0.05),
    dict(lr=0.02, momentum=0.5, nesterov=True, weight_decay=0.1),
]
SGD_IDS = ["plain", "momentum", "nesterov", "weight_decay", "momentum_wd", "nesterov_wd"]
STEPS = 5


def sgd_problem(dtype=np.float64):
    shapes = [(3, 2), (4,), (2, 1, 2, 2)]
    params = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    grads = [[randn(*s, seed=100 + 10 * step + i) for i, s in enumerate(shapes)]
             for step in range(STEPS)]
    return [p.astype(dtype) for p in params], grads


def run_sgd(params, grads_per_step, **settings):
    ps = [Parameter(p.copy(), f"p{i}") for i, p in enumerate(params)]
    opt = SGD(ps, **settings)
    history = []
    for grads in grads_per_step:
        opt.zero_grad()
        for p, g in zip(ps, grads):
            p.grad += g.astype(p.grad.dtype)
        opt.step()
        history.append([p.data.copy() for p in ps])
    return history, opt, ps


@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=SGD_IDS)
def test_sgd_matches_the_documented_rule(settings):
    params, grads = sgd_problem()
    ours, _, _ = run_sgd(params, grads, **settings)
    expected = ref.sgd_reference(params, grads, **settings)
    for step in range(STEPS):
        for a, b in zip(ours[step], expected[step]):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_sgd_first_steps_by_hand():
    """Scalar example worked out by hand: p=1, g=0.5 each step, lr=0.1, momentum=0.9,
    weight_decay=0.1 (PyTorch's rule: g' = g + wd p; v = m v + g'; p -= lr v)."""
    p = Parameter(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad[:] = 0.5
    opt.step()                        # g' = 0.6, v = 0.6, p = 1 - 0.06 = 0.94
    assert p.data[0] == pytest.approx(0.94, abs=1e-15)
    opt.step()                        # g' = 0.5 + 0.094 = 0.594, v = 0.54 + 0.594 = 1.134
    assert p.data[0] == pytest.approx(0.94 - 0.1134, abs=1e-15)
    q = Parameter(np.array([1.0]))
    nesterov = SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    q.grad[:] = 0.5
    nesterov.step()                   # v = 0.5, d = 0.5 + 0.9 * 0.5 = 0.95
    assert q.data[0] == pytest.approx(1 - 0.095, abs=1e-15)
    nesterov.step()                   # v = 0.45 + 0.5 = 0.95, d = 0.5 + 0.855 = 1.355
    assert q.data[0] == pytest.approx(1 - 0.095 - 0.1355, abs=1e-15)
    assert q.grad[0] == 0.5           # the optimizer never modifies the gradient


@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=SGD_IDS)
def test_sgd_optional_parity_with_torch(settings):
    torch = pytest.importorskip("torch")
    params, grads = sgd_problem()
    ours, _, _ = run_sgd(params, grads, **settings)
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = torch.optim.SGD(tensors, **settings)
    for step in range(STEPS):
        opt.zero_grad()
        for t, g in zip(tensors, grads[step]):
            t.grad = torch.tensor(g)
        opt.step()
        for a, t in zip(ours[step], tensors):
            np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-13, atol=1e-15)


def test_sgd_keeps_float32_and_updates_in_place():
    params, grads = sgd_problem(np.float32)
    ps = [Parameter(p.copy()) for p in params]
    before = [p.data for p in ps]
    opt = SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for p, g in zip(ps, grads[0]):
        p.grad += g.astype(np.float32)
    opt.step()
    assert all(p.data is b and p.data.dtype == np.float32 for p, b in zip(ps, before))
    expected = ref.sgd_reference(params, grads[:1], lr=0.1, momentum=0.9, nesterov=True,
                                 weight_decay=0.01)[0]
    for p, e in zip(ps, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-5, atol=1e-6)


def test_sgd_argument_validation():
    p = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr > 0"):
        SGD(p, lr=0)
    with pytest.raises(ValueError, match="momentum >= 0"):
        SGD(p, lr=0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        SGD(p, lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        SGD(p, lr=0.1, nesterov=True)


def test_gradients_accumulate_across_backward_calls_until_zero_grad():
    minicnn.manual_seed(0)
    model = Sequential([Dense(4, 3, activation="tanh"), Dense(3, 2)]).astype(np.float64)
    x, labels = randn(5, 4), labels_for(5, 2)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model.parameters(), lr=0.1)

    def backward_once():
        loss_fn.forward(model.forward(x), labels)
        model.backward(loss_fn.backward())

    backward_once()
    once = [p.grad.copy() for p in model.parameters()]
    assert all(g.any() for g in once)
    backward_once()
    for g, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-14)
    opt.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())
    backward_once()
    for g, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, g, rtol=1e-14)


@pytest.mark.parametrize("settings", SGD_SETTINGS[1:3] + SGD_SETTINGS[4:],
                         ids=SGD_IDS[1:3] + SGD_IDS[4:])
def test_sgd_state_dict_round_trip(settings):
    params, grads = sgd_problem()
    _, opt_a, ps_a = run_sgd(params, grads[:3], **settings)
    state = opt_a.state_dict()
    assert set(state) == {"lr", "momentum", "nesterov", "weight_decay", "velocity", "step"}
    ps_b = [Parameter(p.data.copy()) for p in ps_a]
    opt_b = SGD(ps_b, lr=1.0, momentum=0.1)         # other hyper-parameters: all restored
    opt_b.load_state_dict(state)
    assert (opt_b.lr, opt_b.momentum, opt_b.nesterov, opt_b.weight_decay) == \
        (opt_a.lr, opt_a.momentum, opt_a.nesterov, opt_a.weight_decay)
    for grads_step in grads[3:]:
        for opt, ps in ((opt_a, ps_a), (opt_b, ps_b)):
            opt.zero_grad()
            for p, g in zip(ps, grads_step):
                p.grad += g
            opt.step()
    for a, b in zip(ps_a, ps_b):
        np.testing.assert_array_equal(a.data, b.data)
    # the restored optimizer continues exactly where the uninterrupted run is after 5 steps
    full = ref.sgd_reference(params, grads, **settings)[-1]
    for b, e in zip(ps_b, full):
        np.testing.assert_allclose(b.data, e, rtol=1e-13, atol=1e-15)


def test_sgd_load_state_dict_rejects_mismatched_buffers():
    a = SGD([Parameter(np.zeros(3))], lr=0.1, momentum=0.9)
    b = SGD([Parameter(np.zeros(4))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="velocity buffers do not match"):
        b.load_state_dict(a.state_dict())


# =========================================================================== schedules

def test_step_lr_values():
    schedule = StepLR(0.1, step_size=3, gamma=0.5)
    assert [schedule(s) for s in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rel=1e-15)
    assert StepLR(1.0, 1)(2) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="step_size"):
        StepLR(0.1, 0)


def test_cosine_lr_values():
    schedule = CosineLR(1.0, total_steps=10, min_lr=0.1)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(5) == pytest.approx(0.55)
    assert schedule(10) == pytest.approx(0.1)
    assert schedule(25) == pytest.approx(0.1)             # stays at min_lr after the end
    assert schedule(2) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.2)) / 2)
    values = [schedule(s) for s in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert CosineLR(0.4, 4)(4) == 0.0
    with pytest.raises(ValueError, match="total_steps"):
        CosineLR(0.1, 0)
    assert ConstantLR(0.3)(1000) == 0.3


def test_schedules_optional_parity_with_torch():
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, requires_grad=True)
    for ours, make in [
        (StepLR(0.1, 3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        (CosineLR(0.1, 10, 0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 0.01)),
    ]:
        opt = torch.optim.SGD([param], lr=0.1)
        sched = make(opt)
        for step in range(11):
            assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
            opt.step()
            sched.step()


# =========================================================================== seeding

def test_manual_seed_makes_initialisation_reproducible():
    def weights():
        return [p.data.copy() for p in (Conv2D(3, 4, 3).parameters() + Dense(5, 2).parameters()
                                        + Conv2D(1, 2, 2, init="he").parameters()
                                        + Dense(3, 3, init="glorot").parameters())]
    minicnn.manual_seed(42)
    a = weights()
    minicnn.manual_seed(42)
    b = weights()
    minicnn.manual_seed(43)
    c = weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c) if x.any())


def test_rng_state_round_trip():
    minicnn.manual_seed(7)
    state = random.get_rng_state()
    first = Dense(4, 4).weight.data.copy()
    random.set_rng_state(state)
    np.testing.assert_array_equal(Dense(4, 4).weight.data, first)


def test_tiny_training_run_reduces_the_loss():
    minicnn.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    model = Sequential([Dense(2, 8, activation="relu"), Dense(8, 2)])
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        losses.append(float(loss_fn.forward(model.forward(x), y)))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
