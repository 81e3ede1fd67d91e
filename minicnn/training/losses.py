"""Losses: ``forward(prediction, target) -> scalar`` and ``backward() -> dLoss/dprediction``.

The scalar is a 0-d array of the prediction's array module (``float(loss)`` reads it), so a GPU
training step need not wait for it. Targets are moved to the prediction's module.
"""
from __future__ import annotations

import math
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


def _class_weights(weight: Any) -> list[float] | None:
    """``weight`` (None, or a sequence / 1-D array of K finite non-negative numbers) as a list
    of Python floats, the form the loss stores (and describes as JSON)."""
    if weight is None:
        return None
    values = backend.to_numpy(weight) if hasattr(weight, "dtype") else weight
    try:
        flat = [float(v) for v in values]
        shape_ok = getattr(values, "ndim", 1) == 1 and len(flat) > 0
    except (TypeError, ValueError):
        flat, shape_ok = [], False
    if not shape_ok or not all(math.isfinite(v) and v >= 0 for v in flat):
        raise ValueError("SoftmaxCrossEntropy: weight must be a 1-D list or array of K finite "
                         f"non-negative class weights, got {weight!r:.60}")
    return flat


class SoftmaxCrossEntropy:
    """``torch.nn.CrossEntropyLoss(weight=, label_smoothing=)`` with mean reduction, for
    integer labels: logits (N, K) float, labels (N,) int in [0, K).

    With l[i, k] = -log softmax(logits[i])[k], class weights w (all 1 without ``weight``) and
    eps = ``label_smoothing``, the loss is PyTorch's::

        ( (1 - eps) * sum_i w[y_i] l[i, y_i] + eps / K * sum_i sum_k w[k] l[i, k] ) / sum_i w[y_i]

    (the weighted mean divides by the sum of the targets' weights; without weights that is N).
    Stable for logits of any size: computed from log-softmax with the row maximum subtracted.
    Backward: ``(softmax * ((1 - eps) w[y_i] + eps/K sum_k w[k]) - (1 - eps) w[y_i] onehot
    - eps/K w) / sum_i w[y_i]``, which is (softmax - onehot) / N by default.
    ``weight`` is stored as a list of floats (``config()`` is JSON).
    """

    def __init__(self, label_smoothing: float = 0.0, weight: Any = None) -> None:
        if not isinstance(label_smoothing, int | float) or isinstance(label_smoothing, bool) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError("SoftmaxCrossEntropy: label_smoothing must be a number in [0, 1], "
                             f"got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.weight = _class_weights(weight)
        self._weight_arrays: dict[tuple[str, str], Any] = {}
        self._cache: tuple[Any, ...] | None = None

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-friendly)."""
        return {"label_smoothing": self.label_smoothing, "weight": self.weight}

    def _weight_array(self, xp: Any, dtype: Any) -> Any:
        """The class weights as an array of the logits' module and dtype (made once)."""
        key = (xp.__name__, str(dtype))
        if key not in self._weight_arrays:
            self._weight_arrays[key] = xp.asarray(self.weight, dtype=dtype)
        return self._weight_arrays[key]

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
        if self.weight is not None and len(self.weight) != k:
            raise ValueError(f"SoftmaxCrossEntropy: {len(self.weight)} class weights for logits "
                             f"of {k} classes {tuple(logits.shape)}")
        labels = _to_module(labels, xp)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        sum_exp = exp.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        if self.weight is None and self.label_smoothing == 0.0:
            log_prob = shifted[rows, labels] - xp.log(sum_exp[:, 0])
            self._cache = (exp / sum_exp, labels, None, None)
            return -log_prob.mean()
        c = logits.dtype.type
        eps = self.label_smoothing
        log_prob = shifted - xp.log(sum_exp)                     # (N, K)
        w = None if self.weight is None else self._weight_array(xp, logits.dtype)
        target_w = None if w is None else w[labels]               # (N,)
        picked = log_prob[rows, labels]
        nll = -(picked.sum() if target_w is None else (target_w * picked).sum())
        total = c(n) if target_w is None else target_w.sum()
        loss = c(1 - eps) * nll
        if eps:
            smooth = -(log_prob.sum() if w is None else (log_prob @ w).sum())
            loss = loss + c(eps / k) * smooth
        self._cache = (exp / sum_exp, labels, target_w, total)
        return loss / total

    def backward(self) -> Any:
        if self._cache is None:
            raise ValueError("SoftmaxCrossEntropy: backward called before forward")
        prob, labels, target_w, total = self._cache
        self._cache = None
        xp = backend.get_array_module(prob)
        n, k = prob.shape
        grad = prob
        rows = xp.arange(n)
        if total is None:                                          # the plain mean
            grad[rows, labels] -= 1
            grad *= grad.dtype.type(1.0 / n)
            return grad
        c = prob.dtype.type
        eps = self.label_smoothing
        w = None if self.weight is None else self._weight_array(xp, prob.dtype)
        on_target = c(1 - eps) if target_w is None else target_w * c(1 - eps)   # (N,) or scalar
        spread = c(eps / k) * (c(k) if w is None else w.sum())
        grad *= (on_target + spread) if target_w is None else (on_target + spread)[:, None]
        grad[rows, labels] -= on_target
        if eps:
            grad -= c(eps / k) if w is None else c(eps / k) * w
        grad /= total
        return grad

    def __repr__(self) -> str:
        args = [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        args += [f"weight={self.weight}"] if self.weight is not None else []
        return f"SoftmaxCrossEntropy({', '.join(args)})"


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


class BCEWithLogits:
    """``torch.nn.BCEWithLogitsLoss()`` (mean reduction): binary cross-entropy of sigmoid(x)
    against targets y in [0, 1], over every element, from the logits x without overflow::

        mean of max(x, 0) - x * y + log(1 + exp(-|x|))

    x: logits of any shape, (N,) or (N, 1) for one binary output, (N, K) for K labels; y:
    floating-point targets of x's shape. Backward: (sigmoid(x) - y) / size.
    """

    def __init__(self) -> None:
        self._cache: tuple[Any, Any] | None = None

    def forward(self, logits: Any, targets: Any) -> Any:
        _check_prediction("BCEWithLogits", logits)
        if not hasattr(targets, "dtype") or targets.dtype.kind != "f":
            raise TypeError("BCEWithLogits: expected floating-point targets in [0, 1] (cast "
                            "labels with .astype(float32)), got "
                            f"{getattr(targets, 'dtype', type(targets).__name__)}")
        if tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(f"BCEWithLogits: expected targets of the logits' shape "
                             f"{tuple(logits.shape)}, got {tuple(targets.shape)}")
        if not backend.is_cupy_array(targets) and targets.size and \
                not ((targets >= 0) & (targets <= 1)).all():
            raise ValueError("BCEWithLogits: targets must be in [0, 1], got values from "
                             f"{targets.min()} to {targets.max()}")
        xp = backend.get_array_module(logits)
        y = _to_module(targets, xp).astype(logits.dtype, copy=False)
        c = logits.dtype.type
        e = xp.exp(-xp.abs(logits))                               # in (0, 1]: never overflows
        terms = xp.maximum(logits, c(0)) - logits * y + xp.log1p(e)
        self._cache = (xp.where(logits >= 0, c(1) / (c(1) + e), e / (c(1) + e)), y)
        return terms.mean()

    def backward(self) -> Any:
        if self._cache is None:
            raise ValueError("BCEWithLogits: backward called before forward")
        (prob, y), self._cache = self._cache, None
        grad = prob - y
        grad *= grad.dtype.type(1.0 / grad.size)
        return grad

    def __repr__(self) -> str:
        return "BCEWithLogits()"
