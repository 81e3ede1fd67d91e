"""What a training run records: the per-epoch ``History``, an epoch's running sums
(``EpochTally``, saved in mid-epoch checkpoints), the window of step losses kept on the device
until read (``StepWindow``), and the one-line epoch summary (``describe_epoch``)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from minicnn.core import backend

__all__ = ["History", "EpochTally", "StepWindow", "describe_epoch"]


class History:
    """Per-epoch metrics: ``history.records`` is a list of dicts (epoch, step, lr, train_loss,
    train_acc, val_loss, val_acc, seconds, images_per_s); ``history["val_acc"]`` is one key
    over all epochs. ``stopped`` is None, or "interrupted" after Ctrl-C."""

    def __init__(self, records: Iterable[dict[str, Any]] = ()):
        self.records = [dict(r) for r in records]
        self.stopped: str | None = None

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self.records[key]
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    KERAS_NAMES = {"train_loss": "loss", "train_acc": "accuracy", "val_acc": "val_accuracy",
                   "lr": "learning_rate"}
    """Record keys Keras names differently (``History.history`` uses Keras's names)."""

    @property
    def history(self) -> dict[str, list[Any]]:
        """Each metric over the epochs, as Keras's ``History.history``: {"loss": [...],
        "accuracy": [...], "val_loss": [...], "val_accuracy": [...], "learning_rate": [...],
        and the other record keys as they are}; "epoch" and "step" are left out."""
        keys = dict.fromkeys(k for r in self.records for k in r if k not in ("epoch", "step"))
        return {self.KERAS_NAMES.get(k, k): [r.get(k) for r in self.records] for k in keys}

    def __iter__(self):
        return iter(self.records)

    def __repr__(self) -> str:
        return f"History({len(self.records)} epochs, last={self.records[-1] if self else None})"


class StepWindow:
    """The last few steps' losses and correct counts, kept on the device until read."""

    def __init__(self, size: int):
        self.size = size
        # arrays on the device the loss lives on, made by the first add
        self.loss: Any = None
        self.correct: Any = None
        self.sizes: list[int] = []
        self.has_correct = True

    def add(self, loss: Any, correct: Any, n: int) -> None:
        if self.loss is None:                        # on the device the loss lives on
            xp = backend.get_array_module(loss)
            self.loss = xp.zeros(self.size, dtype=xp.float32)
            self.correct = xp.zeros(self.size, dtype=xp.int64)
        k = len(self.sizes)
        self.loss[k] = loss
        if correct is None:
            self.has_correct = False
        else:
            self.correct[k] = correct
        self.sizes.append(n)

    def full(self) -> bool:
        return len(self.sizes) == self.size

    def drain(self) -> tuple[list[float], list[int] | None, list[int]]:
        """Read the window to the host (one sync) and empty it."""
        k = len(self.sizes)
        if k == 0:
            return [], [] if self.has_correct else None, []
        losses = backend.to_numpy(self.loss[:k]).tolist()
        correct = backend.to_numpy(self.correct[:k]).tolist() if self.has_correct else None
        sizes, self.sizes = self.sizes, []
        return losses, correct, sizes


@dataclass
class EpochTally:
    """An epoch's running sums (JSON-serialisable, saved in mid-epoch checkpoints)."""

    position: int = 0           # batches done
    loss_sum: float = 0.0       # sum over steps of batch loss * batch size
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0        # training time so far, across a resume
    has_correct: bool = True
    skipped: int = 0            # steps skipped for non-finite gradients (mixed precision)
    norm_sum: float = 0.0       # gradient norms (fit's clip_norm / clip_value)
    norm_max: float = 0.0
    norm_count: int = 0


def describe_epoch(record: dict[str, Any], epochs: int) -> str:
    """One line summarising an epoch's record."""
    def pct(v: float | None) -> str:
        return "" if v is None else f" acc {100 * v:.2f}%"
    text = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"
            f"{pct(record['train_acc'])}")
    if "val_loss" in record:
        text += f" | val loss {record['val_loss']:.4f}{pct(record['val_acc'])}"
    if record.get("skipped_steps"):
        text += (f" | {record['skipped_steps']} skipped step"
                 f"{'s' * (record['skipped_steps'] != 1)} (loss scale {record['loss_scale']:g})")
    return text + (f" | lr {record['lr']:.4g} | {record['seconds']:.1f} s "
                   f"({record['images_per_s']:.0f} img/s)")
