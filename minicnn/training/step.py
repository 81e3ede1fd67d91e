"""One training step, ``train_step``, and the error a diverging run stops with::

    out = model.forward(x, training=True, check=False)
    l = loss.forward(out, y)
    optimizer.zero_grad()
    model.backward(loss.backward())        # adds dL/dparam; dL/dx of the input is skipped
    (sync the gradients over ranks; clip them)
    optimizer.step()
"""
from __future__ import annotations

from typing import Any

from minicnn.training.evaluation import correct_count
from minicnn.training.history import History

__all__ = ["train_step", "TrainingError", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 5.0
"""Training stops as diverged when a step's loss exceeds this many times the run's first step's
loss (a fresh classifier starts near ln(classes); a run that learns stays far below that)."""


class TrainingError(RuntimeError):
    """Training stopped because it diverged: a loss became NaN or inf, or rose past
    ``DIVERGENCE_FACTOR`` times the first step's; ``history`` holds the finished epochs."""

    def __init__(self, message: str, history: History):
        super().__init__(message)
        self.history = history


def train_step(model: Any, loss_fn: Any, optimizer: Any, x: Any, y: Any,
               sync: Any = None, clip: Any = None) -> tuple[Any, Any]:
    """One optimizer step on batch (x, y); returns the loss (a 0-d array, left on the device)
    and the number of correct predictions (or None when the outputs are not class scores).
    ``sync`` (a ``distributed.GradientSync``) averages the gradients over the ranks before the
    update, and the returned loss and count are then the global batch's. ``clip`` (a
    ``clipping.GradientClip``) clips the gradients before the update."""
    out = model.forward(x, training=True, check=False)
    loss = loss_fn.forward(out, y)
    correct = correct_count(out, y)
    optimizer.zero_grad()
    model.backward(loss_fn.backward())
    if sync is not None:
        loss, correct = sync(len(x), loss, correct)
    if clip is not None:
        clip(optimizer.params)
    optimizer.step()
    return loss, correct
