"""Losses: ``forward(prediction, target) -> scalar`` and ``backward() -> dLoss/dprediction``.

The scalar is a 0-d array of the prediction's array module (``float(loss)`` reads it), so a GPU
training step need not wait for it. Targets are moved to the prediction's module.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend


def _check_prediction(who: str, x: Any, ndim: int | None = None) -> None:
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"{who}: expected a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{who}: expected a {ndim}-D array (N, classes), got shape "
                         f"{tuple(x.shape)}")


def _to_module(a: Any, xp: Any) -> Any:
    """``a`` as an array of module ``xp`` (no copy when it already is one)."""
    if backend.get_array_module(a) is xp:
        return a
    return backend.to_numpy(a) if xp.__name__ == "numpy" else xp.asarray(a)


class SoftmaxCrossEntropy:
    """Mean over the batch of -log softmax(logits)[label], for integer labels.

    logits (N, K) float, labels (N,) int in [0, K). Stable for logits of any size: computed
    from log-softmax with the row maximum subtracted. Backward gives (softmax - onehot) / N.
    """

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def forward(self, logits: Any, labels: Any) -> Any:
        _check_prediction("SoftmaxCrossEntropy", logits, ndim=2)
        xp = backend.get_array_module(logits)
        n, k = logits.shape
        if not hasattr(labels, "dtype") or labels.dtype.kind not in "iu":
            raise TypeError("SoftmaxCrossEntropy: expected integer class labels, got "
                            f"{getattr(labels, 'dtype', type(labels).__name__)}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"SoftmaxCrossEntropy: expected labels of shape ({n},) for logits "
                             f"{tuple(logits.shape)}, got {tuple(labels.shape)}")
        if not backend.is_cupy_array(labels) and n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"SoftmaxCrossEntropy: labels must be in [0, {k}), got values from "
                             f"{labels.min()} to {labels.max()}")
        labels = _to_module(labels, xp)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        sum_exp = exp.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        log_prob = shifted[rows, labels] - xp.log(sum_exp[:, 0])
        self._cache = (exp / sum_exp, labels)
        return -log_prob.mean()

    def backward(self) -> Any:
        if self._cache is None:
            raise ValueError("SoftmaxCrossEntropy: backward called before forward")
        prob, labels = self._cache
        self._cache = None
        n = prob.shape[0]
        grad = prob
        grad[backend.get_array_module(grad).arange(n), labels] -= 1
        grad *= grad.dtype.type(1.0 / n)
        return grad

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"


class MSELoss:
    """Mean over all elements of (prediction - target)^2; backward 2 (prediction - target) /
    size."""

    def __init__(self) -> None:
        self._cache = None

    def forward(self, prediction: Any, target: Any) -> Any:
        _check_prediction("MSELoss", prediction)
        if tuple(target.shape) != tuple(prediction.shape):
            raise ValueError(f"MSELoss: expected a target of shape {tuple(prediction.shape)}, "
                             f"got {tuple(target.shape)}")
        target = _to_module(target, backend.get_array_module(prediction))
        diff = prediction - target.astype(prediction.dtype, copy=False)
        self._cache = diff
        return (diff * diff).mean()

    def backward(self) -> Any:
        if self._cache is None:
            raise ValueError("MSELoss: backward called before forward")
        diff, self._cache = self._cache, None
        return diff * diff.dtype.type(2.0 / diff.size)

    def __repr__(self) -> str:
        return "MSELoss()"
