"""Evaluation and batched inference: ``evaluate`` (mean loss and accuracy), ``predict``
(outputs), ``confusion_matrix``.

Both run the model in eval mode under ``no_grad`` in batches of ``EVAL_BATCH_SIZE``; raw arrays
get the model's own ``input_transform`` (what ``fit`` trained it with) and go where its
parameters are. With a communicator of several ranks (``minicnn.training.distributed``),
``evaluate`` scores each rank's contiguous part of the data and sums the figures over the ranks.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from minicnn.core import backend
from minicnn.core.modes import no_grad
from minicnn.data import DataLoader, raw_input_transform
from minicnn.training import distributed
from minicnn.training.losses import SoftmaxCrossEntropy

__all__ = ["evaluate", "predict", "confusion_matrix", "Evaluation", "EVAL_BATCH_SIZE"]

EVAL_BATCH_SIZE = 256
"""Default batch for evaluation and prediction. Inference keeps nothing for backward, but each
layer's output for the whole batch still exists at once (~200 KB per image for the reference
CNN): at 1000 images that was ~190 MB on top of training's working set, the run's peak
resident memory, and on a CPU batches of 256 are as fast."""


class Evaluation(NamedTuple):
    """Mean loss and accuracy (fraction correct, None if the outputs are not class scores)."""

    loss: float
    accuracy: float | None


def model_backend(model: Any) -> str | None:
    """'numpy' or 'cupy': where the model's parameters are (None without parameters)."""
    params = model.parameters()
    return backend.get_array_module(params[0].data).__name__ if params else None


def eval_loader(data: Any, batch_size: int, model: Any, transform: Any = None) -> DataLoader:
    """Data in order, unaugmented, in batches of ``batch_size``; raw arrays get ``transform``,
    else the model's own (``minicnn.data.model_transform``), and go where the model's
    parameters are."""
    if isinstance(data, DataLoader):
        return data.for_eval(batch_size)
    x, y = data if isinstance(data, (tuple, list)) and len(data) == 2 else (data, None)
    if transform is None:
        transform = raw_input_transform(model, x, stacklevel=4)
    return DataLoader(x, y, batch_size=batch_size, shuffle=False, seed=0, transform=transform,
                      backend_name=model_backend(model))


def correct_count(out: Any, y: Any) -> Any:
    """Number of rows of class scores ``out`` (N, K) whose argmax is the integer label, or None."""
    if y is None or out.ndim != 2 or y.ndim != 1 or y.dtype.kind not in "iu":
        return None
    return (out.argmax(axis=1) == y).sum()


def evaluate(model: Any, data: Any, loss: Any = None, batch_size: int = EVAL_BATCH_SIZE,
             transform: Any = None, comm: Any = None) -> Evaluation:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``data``: a DataLoader (its
    transform is used) or an (x, y) pair (``transform``, default ToFloat). Batches of
    ``batch_size`` (default ``EVAL_BATCH_SIZE``, 256). With a communicator ``comm`` of several
    ranks (``minicnn.training.distributed``), each rank evaluates its contiguous part of the
    data and the sums are all-reduced, so every rank returns the whole data set's figures."""
    loader = eval_loader(data, batch_size, model, transform)
    if loader.y is None:
        raise ValueError("evaluate: the data has no labels")
    loss_fn = loss if loss is not None else SoftmaxCrossEntropy()
    loss_sum, correct, seen = 0.0, None, 0
    batches: Any = loader
    if comm is not None and comm.size > 1:
        lo, hi = distributed.shard_range(loader.num_samples, comm.rank, comm.size)
        batches = [] if hi == lo else DataLoader(
            loader.x[lo:hi], loader.y[lo:hi], batch_size=loader.batch_size, shuffle=False,
            seed=0, transform=loader.transform, backend_name=loader.backend_name)
    with no_grad():
        for xb, yb in batches:
            out = model.forward(xb, training=False, check=False)
            n = len(xb)
            loss_sum = loss_sum + loss_fn.forward(out, yb).astype("float64") * n
            c = correct_count(out, yb)
            correct = None if c is None else (c if correct is None else correct + c)
            seen += n
    if comm is not None and comm.size > 1:     # ranks without class scores (or data) say so
        loss_sum, total, seen, unscored = comm.allreduce_values(
            [float(loss_sum), 0 if correct is None else int(correct), seen,
             int(correct is None and seen > 0)])
        correct = None if unscored else total
    accuracy = None if correct is None else int(correct) / seen
    return Evaluation(float(loss_sum) / seen, accuracy)


def predict(model: Any, x: Any, batch_size: int = EVAL_BATCH_SIZE,
            transform: Any = None) -> Any:
    """Model outputs (N, ...), on the model's array module, for inputs x (N, H, W) or
    (N, C, H, W), in eval mode and batches of ``batch_size``. x may be a DataLoader (its
    transform is used)."""
    loader = eval_loader(x, batch_size, model, transform)
    with no_grad():
        outs = [model.forward(xb, training=False, check=False) for xb, _ in loader]
    return backend.get_array_module(*outs).concatenate(outs, axis=0)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> Any:
    """(K, K) int64 counts: entry [i, j] is how many samples of class i were predicted j."""
    xp = backend.get_array_module(labels, predictions)
    labels, predictions = xp.asarray(labels), xp.asarray(predictions)
    flat = labels.astype(xp.int64) * num_classes + predictions.astype(xp.int64)
    return xp.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                         num_classes)
