"""SoftmaxCrossEntropy with class weights and label smoothing, and BCEWithLogits: forward and
gradient against PyTorch (float32 and float64, every option combination), against naive
references, central-difference gradient checks, stability, and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import reference as ref
from conftest import randn

from minicnn.training.losses import BCEWithLogits, SoftmaxCrossEntropy

WEIGHTS = [None, [0.2, 1.0, 3.0, 0.5, 1.5]]
SMOOTHING = [0.0, 0.1, 1.0]
TOLERANCE = {np.float32: 2e-6, np.float64: 1e-13}


def _labels(n, k, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


def _targets(shape, seed=0, hard=False):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, shape) if hard else rng.uniform(0, 1, shape)).astype(np.float64)


def central_difference(loss_fn, x, y, eps=1e-6):
    """dLoss/dx by central differences, element by element, in float64."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        plus = float(loss_fn.forward(x, y))
        x[i] = old - eps
        minus = float(loss_fn.forward(x, y))
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def _relative(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# --------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("smoothing", SMOOTHING)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_torch(weight, smoothing, dtype):
    torch = pytest.importorskip("torch")
    logits = (3 * randn(7, 5, seed=1)).astype(dtype)
    labels = _labels(7, 5, seed=2)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=smoothing, weight=weight)
    loss = loss_fn.forward(logits, labels)
    grad = loss_fn.backward()
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == logits.shape
    xt = torch.tensor(logits, requires_grad=True)
    wt = None if weight is None else torch.tensor(np.array(weight, dtype=dtype))
    lt = torch.nn.CrossEntropyLoss(weight=wt, label_smoothing=smoothing)(
        xt, torch.tensor(labels))
    lt.backward()
    tol = TOLERANCE[dtype]
    assert _relative(loss, lt.item()) < tol
    assert _relative(grad, xt.grad.numpy()) < tol


@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("smoothing", SMOOTHING)
def test_cross_entropy_matches_naive_reference(weight, smoothing):
    logits, labels = 2 * randn(6, 5, seed=3), _labels(6, 5, seed=4)
    got = float(SoftmaxCrossEntropy(smoothing, weight).forward(logits, labels))
    want = ref.cross_entropy_smoothed(logits, labels, smoothing, weight)
    assert got == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("smoothing", SMOOTHING)
def test_cross_entropy_gradient_by_central_differences(weight, smoothing):
    logits, labels = 2 * randn(4, 5, seed=5), _labels(4, 5, seed=6)
    loss_fn = SoftmaxCrossEntropy(smoothing, weight)
    loss_fn.forward(logits, labels)
    analytic = loss_fn.backward()
    numeric = central_difference(loss_fn, logits.copy(), labels)
    assert _relative(analytic, numeric) < 1e-7


def test_cross_entropy_defaults_are_unchanged():
    """No options: the plain mean, (softmax - onehot) / N, as before."""
    logits, labels = randn(5, 3, seed=7), _labels(5, 3, seed=8)
    plain = SoftmaxCrossEntropy()
    explicit = SoftmaxCrossEntropy(label_smoothing=0.0, weight=[1.0, 1.0, 1.0])
    assert float(plain.forward(logits, labels)) == pytest.approx(
        float(explicit.forward(logits, labels)), rel=1e-14)
    np.testing.assert_allclose(plain.backward(), explicit.backward(), rtol=1e-13, atol=1e-16)
    assert repr(plain) == "SoftmaxCrossEntropy()"


def test_cross_entropy_weighted_mean_divides_by_target_weights():
    logits = np.zeros((3, 2))                               # every -log p is log 2
    loss = SoftmaxCrossEntropy(weight=[1.0, 3.0]).forward(logits, np.array([0, 1, 1]))
    assert float(loss) == pytest.approx(np.log(2), rel=1e-14)
    logits = np.array([[0.0, 0.0], [5.0, 0.0]])
    loss_fn = SoftmaxCrossEntropy(weight=[1.0, 3.0])
    got = float(loss_fn.forward(logits, np.array([0, 1])))
    assert got == pytest.approx((np.log(2) + 3 * (5 + np.log1p(np.exp(-5)))) / 4, rel=1e-13)


def test_cross_entropy_config_is_json_and_rebuilds():
    loss_fn = SoftmaxCrossEntropy(0.2, np.array([1, 2.5, 0], dtype=np.float32))
    config = json.loads(json.dumps(loss_fn.config()))
    assert config == {"label_smoothing": 0.2, "weight": [1.0, 2.5, 0.0]}
    again = SoftmaxCrossEntropy(**config)
    logits, labels = randn(4, 3), np.array([0, 1, 1, 2])
    assert float(again.forward(logits, labels)) == float(loss_fn.forward(logits, labels))
    assert repr(loss_fn) == "SoftmaxCrossEntropy(label_smoothing=0.2, weight=[1.0, 2.5, 0.0])"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_options_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-3e4, 2e4, 1e4]], dtype=dtype)
    loss_fn = SoftmaxCrossEntropy(0.1, [1.0, 2.0, 0.5])
    loss = loss_fn.forward(logits, np.array([0, 2]))
    assert np.isfinite(loss) and np.isfinite(loss_fn.backward()).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"label_smoothing": 1.5}, "label_smoothing must be a number in \\[0, 1\\], got 1.5"),
    ({"label_smoothing": -0.1}, "label_smoothing must be a number in \\[0, 1\\]"),
    ({"label_smoothing": "0.1"}, "label_smoothing must be a number"),
    ({"weight": [1.0, -1.0]}, "weight must be a 1-D list or array of K finite non-negative"),
    ({"weight": [1.0, float("nan")]}, "weight must be"),
    ({"weight": [[1.0, 2.0]]}, "weight must be"),
    ({"weight": []}, "weight must be"),
    ({"weight": "abc"}, "weight must be"),
    ({"weight": 3.0}, "weight must be"),
])
def test_cross_entropy_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"SoftmaxCrossEntropy: {match}"):
        SoftmaxCrossEntropy(**kwargs)


def test_cross_entropy_weight_count_must_match_classes():
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: 2 class weights for logits of "
                                         r"3 classes \(4, 3\)"):
        SoftmaxCrossEntropy(weight=[1.0, 2.0]).forward(randn(4, 3), np.array([0, 1, 2, 0]))


# --------------------------------------------------------------------------- BCE with logits

BCE_SHAPES = [(6,), (6, 1), (5, 4)]


@pytest.mark.parametrize("shape", BCE_SHAPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_matches_torch(shape, hard, dtype):
    torch = pytest.importorskip("torch")
    logits = (4 * randn(*shape, seed=9)).astype(dtype)
    targets = _targets(shape, seed=10, hard=hard).astype(dtype)
    loss_fn = BCEWithLogits()
    loss = loss_fn.forward(logits, targets)
    grad = loss_fn.backward()
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == shape
    xt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.BCEWithLogitsLoss()(xt, torch.tensor(targets))
    lt.backward()
    tol = TOLERANCE[dtype]
    assert _relative(loss, lt.item()) < tol
    assert _relative(grad, xt.grad.numpy()) < tol


@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_matches_naive_reference_and_central_differences(shape):
    logits, targets = 3 * randn(*shape, seed=11), _targets(shape, seed=12)
    loss_fn = BCEWithLogits()
    assert float(loss_fn.forward(logits, targets)) == pytest.approx(
        ref.bce_with_logits(logits, targets), rel=1e-13)
    analytic = loss_fn.backward()
    numeric = central_difference(loss_fn, logits.copy(), targets)
    assert _relative(analytic, numeric) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0, 100.0, -100.0]], dtype=dtype)
    targets = np.array([[1.0, 0.0, 0.5, 0.0, 1.0]], dtype=dtype)
    loss_fn = BCEWithLogits()
    loss = float(loss_fn.forward(logits, targets))
    assert loss == pytest.approx((np.log(2) + 200) / 5, rel=1e-6)
    np.testing.assert_allclose(loss_fn.backward(), [[0, 0, 0, 0.2, -0.2]], atol=1e-7)


def test_bce_float64_targets_do_not_upcast_float32_logits():
    loss_fn = BCEWithLogits()
    loss = loss_fn.forward(randn(4, 2).astype(np.float32), _targets((4, 2)))
    assert loss.dtype == np.float32 and loss_fn.backward().dtype == np.float32


def test_bce_bad_inputs():
    bce = BCEWithLogits()
    with pytest.raises(TypeError, match="BCEWithLogits: expected floating-point targets in "
                                        r"\[0, 1\] .*got int64"):
        bce.forward(randn(4, 1), np.ones((4, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"BCEWithLogits: expected targets of the logits' "
                                         r"shape \(4, 1\), got \(4,\)"):
        bce.forward(randn(4, 1), np.ones(4))
    with pytest.raises(ValueError, match=r"BCEWithLogits: targets must be in \[0, 1\], got "
                                         "values from -0.5 to 1.0"):
        bce.forward(randn(2, 1), np.array([[-0.5], [1.0]]))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\]"):
        bce.forward(randn(2), np.array([np.nan, 0.0]))
    with pytest.raises(TypeError, match="BCEWithLogits: expected a floating-point array"):
        bce.forward(np.ones((2, 1), dtype=np.int32), np.ones((2, 1)))
    with pytest.raises(ValueError, match="BCEWithLogits: backward called before forward"):
        BCEWithLogits().backward()
    assert repr(bce) == "BCEWithLogits()"
