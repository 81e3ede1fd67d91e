"""Evaluation and batched inference: ``evaluate`` (mean loss and accuracy), ``predict``
(outputs), ``confusion_matrix``.

Both run the model in eval mode under ``no_grad`` in batches of ``EVAL_BATCH_SIZE``; raw arrays
get the model's own ``input_transform`` (what ``fit`` trained it with) and go where its
parameters are. With a communicator of several ranks (``minicnn.training.distributed``),
``evaluate`` scores each rank's contiguous part of the data and sums the figures over the ranks.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

from minicnn.core import backend
from minicnn.core.modes import no_grad
from minicnn.data import DataLoader, ToFloat, raw_input_transform
from minicnn.training import distributed
from minicnn.training.losses import SoftmaxCrossEntropy

__all__ = ["evaluate", "predict", "predict_proba", "predict_classes", "confusion_matrix",
           "Evaluation", "EVAL_BATCH_SIZE"]

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
        if not isinstance(transform, ToFloat) and getattr(x, "dtype", None) is not None and \
                x.dtype.kind == "f" and x.size and float(x.min()) < 0:
            warnings.warn(f"{type(model).__name__}: float input with negative values looks "
                          f"already normalised, and the model's {transform!r} is applied to it "
                          "again; pass raw images (uint8 0..255 or floats in [0, 1]), or "
                          "transform=lambda x: x for input that is already transformed",
                          stacklevel=4)
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
    transform is used) or an (x, y) pair of raw images and labels (``transform``, default the
    model's own, ``model.input_transform``; see ``predict`` for what x holds). Batches of
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


def one_image_as_batch(model: Any, x: Any) -> Any:
    """x itself, or a batch of one (1, ...) when x is one image of the model's input shape:
    (C, H, W), or (H, W) for a model of one channel (as PyTorch and Keras users expect)."""
    if not hasattr(x, "shape") or isinstance(x, DataLoader):
        return x
    shape = model.declared_input_shape() if hasattr(model, "declared_input_shape") else None
    shape = shape or getattr(model, "seen_input_shape", None)
    if shape is None:
        return x[None] if x.ndim == 2 else x            # (H, W): one grey image
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x[None]
    if len(shape) == 3 and shape[0] == 1 and tuple(x.shape) == shape[1:]:
        return x[None, None]
    return x


def predict(model: Any, x: Any, batch_size: int = EVAL_BATCH_SIZE,
            transform: Any = None) -> Any:
    """Model outputs (N, ...) (class scores, i.e. logits, for a classifier), on the model's
    array module, in eval mode and batches of ``batch_size``.

    x: raw images as ``fit``'s loader held them, uint8 0..255 or floats in [0, 1], (N, H, W)
    or (N, C, H, W); or one image (C, H, W) or (H, W), which gives a batch of one (1, ...).
    The model's own transform (``model.input_transform``, e.g. Normalize) is applied; a
    warning says so when float input looks already normalised (negative values). x may also
    be a DataLoader (its transform is used). ``transform`` overrides the model's. Classes are
    ``predict(x).argmax(1)`` (``predict_classes``); probabilities ``predict_proba``."""
    loader = eval_loader(one_image_as_batch(model, x), batch_size, model, transform)
    with no_grad():
        outs = [model.forward(xb, training=False, check=False) for xb, _ in loader]
    return backend.get_array_module(*outs).concatenate(outs, axis=0)


def predict_proba(model: Any, x: Any, batch_size: int = EVAL_BATCH_SIZE,
                  transform: Any = None) -> Any:
    """Class probabilities (N, K): the softmax of ``predict``'s scores (same arguments)."""
    out = predict(model, x, batch_size, transform)
    xp = backend.get_array_module(out)
    e = xp.exp(out - out.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_classes(model: Any, x: Any, batch_size: int = EVAL_BATCH_SIZE,
                    transform: Any = None) -> Any:
    """The likeliest class of each input (N,) int: ``predict(x).argmax(1)`` (same arguments)."""
    return predict(model, x, batch_size, transform).argmax(axis=1)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> Any:
    """(K, K) int64 counts: entry [i, j] is how many samples of class i were predicted j."""
    xp = backend.get_array_module(labels, predictions)
    labels, predictions = xp.asarray(labels), xp.asarray(predictions)
    flat = labels.astype(xp.int64) * num_classes + predictions.astype(xp.int64)
    return xp.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                         num_classes)
