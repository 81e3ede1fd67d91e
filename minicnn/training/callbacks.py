"""Callbacks: objects ``fit`` calls during training, as in Keras.

    fit(model, data, 20, opt, val_data=val, callbacks=[
        EarlyStopping(patience=3), BestCheckpoint("best.npz"), CSVLogger("log.csv")])

A callback has any of ``on_train_begin(run)`` (``run`` is a ``TrainingRun``: the model, the
history, the checkpoint metadata, and whether this process writes files), ``on_step_end(step)``
and ``on_epoch_end(record)``; a plain function is an ``on_epoch_end``. Setting
``stop_training = True`` (with a ``stop_reason``) in ``on_epoch_end`` stops training after
that epoch. The built-in ones keep no state of their own: they read the run's history, which a
checkpoint saves, so a resumed run decides exactly as an uninterrupted one. ``fit``'s
``early_stop=N`` and ``best_checkpoint=PATH`` are shorthands for the first two.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

from minicnn.core.atomic import atomic_write_bytes
from minicnn.training.history import History

__all__ = ["Callback", "TrainingRun", "EarlyStopping", "BestCheckpoint", "CSVLogger",
           "TensorBoard", "best_so_far"]


@dataclass
class TrainingRun:
    """What ``on_train_begin`` receives: the model being trained, its history so far (a
    resumed run's included), the checkpoint metadata and whether this process writes files
    (rank 0 of a distributed run)."""

    model: Any
    history: History
    meta: dict[str, Any] = field(default_factory=dict)
    writes_files: bool = True


class Callback:
    """Base class: override the hooks you need (each does nothing here)."""

    stop_training = False
    stop_reason = ""

    def on_train_begin(self, run: TrainingRun) -> None:
        self.run = run

    def on_step_end(self, step: int) -> None:
        pass

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        pass


def best_so_far(history: History, monitor: str, mode: str = "min", min_delta: float = 0.0
                ) -> tuple[int | None, int]:
    """(epoch of the best ``monitor`` value, epochs since it); an epoch is better only by more
    than ``min_delta``. (None, 0) when no epoch has the value."""
    best_epoch, best = None, math.inf
    sign = 1.0 if mode == "min" else -1.0
    for record in history:
        value = record.get(monitor)
        if value is None or not math.isfinite(value):
            continue
        if sign * value < best - min_delta:
            best_epoch, best = record["epoch"], sign * value
    if best_epoch is None:
        return None, 0
    return best_epoch, history[-1]["epoch"] - best_epoch


def _check_monitor(who: str, monitor: str, mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{who}: mode must be 'min' or 'max', got {mode!r}")
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{who}: monitor must be a record key such as 'val_loss', got "
                         f"{monitor!r}")


def _monitored(who: str, record: dict[str, Any], monitor: str) -> None:
    if record.get(monitor) is None:
        raise ValueError(f"{who} watches {monitor}, which the epoch's record lacks (keys: "
                         f"{', '.join(record)}); for val_loss give fit val_data")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, patience: int, monitor: str = "val_loss", mode: str = "min",
                 min_delta: float = 0.0):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        _check_monitor("EarlyStopping", monitor, mode)
        self.patience, self.monitor, self.mode, self.min_delta = patience, monitor, mode, \
            float(min_delta)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        _monitored("EarlyStopping", record, self.monitor)
        best, since = best_so_far(self.run.history, self.monitor, self.mode, self.min_delta)
        if since >= self.patience:
            self.stop_training = True
            what = "validation loss" if self.monitor == "val_loss" else self.monitor
            self.stop_reason = (f"early stop: {what} has not improved for {since} epochs "
                                f"(best: epoch {best})")


class BestCheckpoint(Callback):
    """Keep the model of the best ``monitor`` value so far at ``path`` (a checkpoint)."""

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", mode: str = "min"):
        _check_monitor("BestCheckpoint", monitor, mode)
        self.path, self.monitor, self.mode = path, monitor, mode

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        _monitored("BestCheckpoint", record, self.monitor)
        best, since = best_so_far(self.run.history, self.monitor, self.mode)
        if since == 0 and self.run.writes_files:
            from minicnn.saving.checkpoint import save
            save(self.run.model, self.path, best_epoch=best, **self.run.meta)


class CSVLogger(Callback):
    """Write the history as CSV to ``path`` after every epoch (the whole file, atomically, so
    a resumed run's file holds every epoch once); columns in the order keys first appear."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if not self.run.writes_files:
            return
        records = self.run.history.records
        columns = list(dict.fromkeys(k for r in records for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_bytes(self.path, text.getvalue().encode())


class TensorBoard(Callback):
    """Log every number of each epoch's record as a TensorBoard scalar (step = epoch) under
    ``log_dir``, with tensorboardX (``pip install -e ".[tensorboard]"``)."""

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError('TensorBoard: tensorboardX is not installed; pip install -e '
                              '".[tensorboard]"') from None
        self.log_dir = os.fspath(log_dir)
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if not self.run.writes_files:
            return
        if self.writer is None:
            self.writer = self._writer_class(self.log_dir)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
