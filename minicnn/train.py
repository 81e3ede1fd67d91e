"""The training loop (``fit``), evaluation (``evaluate``) and batched inference (``predict``).

One training step is::

    optimizer.lr = schedule(step)
    out = model.forward(x, training=True, check=False)
    l = loss.forward(out, y)
    optimizer.zero_grad()
    model.backward(loss.backward(), input_grad=False)     # the first layer skips dL/dx
    optimizer.step()

Losses and correct counts stay on the device in a small window and are read back to the host
every ``log_every`` steps, so a GPU is never made to wait for the host on every step; the
epoch means are still exact (every step's loss is summed). A NaN or inf loss stops training
(``TrainingError``, naming the epoch and step) without overwriting the last good checkpoint.
The first Ctrl-C stops at the end of the current step, saves a checkpoint and returns; a
second one interrupts at once.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any, Iterable, NamedTuple

from tqdm import tqdm

from minicnn import backend
from minicnn import init as _init
from minicnn.data import DataLoader
from minicnn.losses import SoftmaxCrossEntropy

__all__ = ["fit", "evaluate", "predict", "confusion_matrix", "History", "Evaluation",
           "TrainingError"]


class TrainingError(RuntimeError):
    """Training stopped because the loss became NaN or inf; ``history`` holds the finished
    epochs."""

    def __init__(self, message: str, history: "History"):
        super().__init__(message)
        self.history = history


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

    def __iter__(self):
        return iter(self.records)

    def __repr__(self) -> str:
        return f"History({len(self.records)} epochs, last={self.records[-1] if self else None})"


class Evaluation(NamedTuple):
    """Mean loss and accuracy (fraction correct, None if the outputs are not class scores)."""

    loss: float
    accuracy: float | None


# --------------------------------------------------------------------------- data helpers

def _train_loader(data: Any, batch_size: int, seed: int | None) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=True, seed=seed)
    raise TypeError(f"expected a DataLoader or an (x, y) pair, got {type(data).__name__}")


def _eval_loader(data: Any, batch_size: int, transform: Any = None) -> DataLoader:
    """Data in order, unaugmented, in batches of ``batch_size``; pairs get ``transform``."""
    if isinstance(data, DataLoader):
        return data.for_eval(batch_size)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=False, seed=0,
                          transform=transform)
    return DataLoader(data, None, batch_size=batch_size, shuffle=False, seed=0,
                      transform=transform)


def _correct(out: Any, y: Any) -> Any:
    """Number of rows of class scores ``out`` (N, K) whose argmax is the integer label, or None."""
    if y is None or out.ndim != 2 or y.ndim != 1 or y.dtype.kind not in "iu":
        return None
    return (out.argmax(axis=1) == y).sum()


# --------------------------------------------------------------------------- evaluation

def evaluate(model: Any, data: Any, loss: Any = None, batch_size: int = 1000,
             transform: Any = None) -> Evaluation:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``data``: a DataLoader (its
    transform is used) or an (x, y) pair (``transform``, default ToFloat). Batches of 1000."""
    loader = _eval_loader(data, batch_size, transform)
    if loader.y is None:
        raise ValueError("evaluate: the data has no labels")
    loss_fn = loss if loss is not None else SoftmaxCrossEntropy()
    was_training = model.training
    loss_sum, correct, seen = 0.0, None, 0
    try:
        for xb, yb in loader:
            out = model.forward(xb, training=False, check=False)
            n = len(xb)
            loss_sum = loss_sum + loss_fn.forward(out, yb).astype("float64") * n
            c = _correct(out, yb)
            correct = None if c is None else (c if correct is None else correct + c)
            seen += n
    finally:
        model.train(was_training)
        model.clear_cache()
    accuracy = None if correct is None else int(correct) / seen
    return Evaluation(float(loss_sum) / seen, accuracy)


def predict(model: Any, x: Any, batch_size: int = 1000, transform: Any = None) -> Any:
    """Model outputs (N, ...) on the active backend for inputs x (N, H, W) or (N, C, H, W), in
    eval mode and batches of ``batch_size``. x may be a DataLoader (its transform is used)."""
    xp = backend.xp
    loader = _eval_loader(x, batch_size, transform)
    was_training = model.training
    try:
        outs = [model.forward(xb, training=False, check=False) for xb, _ in loader]
    finally:
        model.train(was_training)
        model.clear_cache()
    return xp.concatenate(outs, axis=0)


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> Any:
    """(K, K) int64 counts: entry [i, j] is how many samples of class i were predicted j."""
    xp = backend.xp
    labels, predictions = xp.asarray(labels), xp.asarray(predictions)
    flat = labels.astype(xp.int64) * num_classes + predictions.astype(xp.int64)
    return xp.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes,
                                                                         num_classes)


# --------------------------------------------------------------------------- training

class _Window:
    """The last few steps' losses and correct counts, kept on the device until read."""

    def __init__(self, size: int):
        xp = backend.xp
        self.loss = xp.zeros(size, dtype=xp.float32)
        self.correct = xp.zeros(size, dtype=xp.int64)
        self.sizes: list[int] = []
        self.has_correct = True

    def add(self, loss: Any, correct: Any, n: int) -> None:
        k = len(self.sizes)
        self.loss[k] = loss
        if correct is None:
            self.has_correct = False
        else:
            self.correct[k] = correct
        self.sizes.append(n)

    def full(self) -> bool:
        return len(self.sizes) == len(self.loss)

    def drain(self) -> tuple[list[float], list[int] | None, list[int]]:
        """Read the window to the host (one sync) and empty it."""
        k = len(self.sizes)
        losses = backend.to_numpy(self.loss[:k]).tolist()
        correct = backend.to_numpy(self.correct[:k]).tolist() if self.has_correct else None
        sizes, self.sizes = self.sizes, []
        return losses, correct, sizes


class _StopRequest:
    """While active, the first Ctrl-C only sets ``requested``; a second one interrupts."""

    def __enter__(self) -> "_StopRequest":
        self.requested, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


def _save(path: Any, model: Any, optimizer: Any, loader: DataLoader, history: History,
          epoch: int, step: int, epochs: int, partial: dict | None, meta: dict) -> None:
    from minicnn.checkpoint import save
    training = {"epoch": epoch, "step": step, "epochs": epochs, "partial": partial,
                "rng": _init.get_rng_state(), "loader": loader.state_dict(),
                "history": history.records}
    save(model, path, optimizer, training=training, **meta)


def _resume(path: Any, model: Any, optimizer: Any, loader: DataLoader) -> tuple:
    """Restore weights, optimizer, RNGs and history from ``path``; return (epoch, step,
    partial, history)."""
    from minicnn.checkpoint import CheckpointError, load_weights
    ckpt = load_weights(model, path)
    training = ckpt.meta.get("training")
    if not training or ckpt.optimizer_state is None:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer state or "
                              "training progress saved); cannot resume from it")
    try:
        optimizer.load_state_dict(ckpt.optimizer_state)
        loader.load_state_dict(training["loader"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: does not fit this run: {exc}") from None
    _init.set_rng_state(training["rng"])
    return (training["epoch"], training["step"], training.get("partial"),
            History(training["history"]))


def fit(model: Any, train_data: Any, epochs: int, optimizer: Any, loss: Any = None,
        val_data: Any = None, schedule: Any = None, callbacks: Iterable[Any] = (),
        batch_size: int = 128, seed: int | None = None, checkpoint: Any = None,
        resume: Any = False, meta: dict[str, Any] | None = None, progress: bool = True,
        log_every: int = 20, eval_batch_size: int = 1000) -> History:
    """Train ``model`` for ``epochs`` epochs with ``optimizer`` and return the History.

    train_data: a DataLoader, or an (x, y) pair batched here (``batch_size``, shuffled with
    ``seed``). loss: default SoftmaxCrossEntropy(). val_data: a DataLoader or (x, y) pair
    (pairs use the training loader's transform), evaluated after every epoch. schedule: maps
    the global step to the lr. callbacks: callables ``cb(record)`` or objects with
    ``on_epoch_end(record)`` and/or ``on_step_end(step)``. checkpoint: a path written after
    every epoch and on Ctrl-C (with ``meta`` merged into its metadata); resume: True to
    continue from ``checkpoint``, or the path of a checkpoint to continue from. Raises
    TrainingError if the loss becomes NaN or inf.
    """
    loader = _train_loader(train_data, batch_size, seed)
    val_loader = None if val_data is None else _eval_loader(val_data, eval_batch_size,
                                                           loader.transform)
    loss_fn = loss if loss is not None else SoftmaxCrossEntropy()
    meta = dict(meta or {})
    if hasattr(loader.transform, "config"):
        meta.setdefault("transform", loader.transform.config())
    epoch, step, partial, history = 0, 0, None, History()
    good = None                          # the checkpoint holding the last good weights
    if resume:
        source = checkpoint if resume is True else resume
        if source is None:
            raise ValueError("fit: resume=True needs a checkpoint path")
        epoch, step, partial, history = _resume(source, model, optimizer, loader)
        good = source
        if epoch >= epochs:
            _say(progress, f"already trained for {epoch} epochs (asked for {epochs})")
    on_epoch = [getattr(cb, "on_epoch_end", cb) for cb in callbacks
                if hasattr(cb, "on_epoch_end") or callable(cb)]
    on_step = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    steps = len(loader)
    with _StopRequest() as stop:
        while epoch < epochs:
            part = partial or {"position": 0, "loss_sum": 0.0, "correct": 0, "seen": 0,
                               "seconds": 0.0, "has_correct": True}
            partial = None
            started = time.perf_counter() - part["seconds"]
            bar = tqdm(total=steps, initial=part["position"], desc=f"epoch {epoch + 1}/{epochs}",
                       unit="step", disable=not progress, file=sys.stderr, dynamic_ncols=True)
            window, mark, marked_seen = _Window(max(1, log_every)), time.perf_counter(), 0
            batches = iter(loader)
            try:
                for xb, yb in batches:
                    if schedule is not None:
                        optimizer.lr = float(schedule(step))
                    out = model.forward(xb, training=True, check=False)
                    value = loss_fn.forward(out, yb)
                    correct = _correct(out, yb)
                    optimizer.zero_grad()
                    model.backward(loss_fn.backward(), input_grad=False)
                    optimizer.step()
                    window.add(value, correct, len(xb))
                    step += 1
                    part["position"] += 1
                    bar.update(1)
                    for cb in on_step:
                        cb(step)
                    if window.full() or part["position"] == steps or stop.requested:
                        losses, counts, sizes = window.drain()
                        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
                        if bad is not None:
                            at = part["position"] - len(losses) + bad + 1
                            kept = (f"the last good checkpoint is {good}" if good
                                    else "no checkpoint was written")
                            raise TrainingError(
                                f"loss is {losses[bad]} at epoch {epoch + 1}, step {at} of "
                                f"{steps} (global step {step - len(losses) + bad + 1}); "
                                f"training stopped ({kept}); try a smaller learning rate",
                                history)
                        part["loss_sum"] += sum(v * n for v, n in zip(losses, sizes))
                        part["seen"] += sum(sizes)
                        if counts is None:
                            part["has_correct"] = False
                        else:
                            part["correct"] += sum(counts)
                        now = time.perf_counter()
                        rate = (part["seen"] - marked_seen) / max(now - mark, 1e-9)
                        mark, marked_seen = now, part["seen"]
                        postfix = {"loss": f"{sum(losses) / len(losses):.4f}"}
                        if part["has_correct"]:
                            postfix["acc"] = f"{part['correct'] / part['seen']:.4f}"
                        postfix["img/s"] = f"{rate:.0f}"
                        bar.set_postfix(postfix, refresh=False)
                    if stop.requested:
                        break
                if stop.requested and part["position"] < steps:
                    part["seconds"] = time.perf_counter() - started
                    bar.close()
                    if checkpoint is not None:
                        _save(checkpoint, model, optimizer, loader, history, epoch, step,
                              epochs, part, meta)
                    _say(True, f"interrupted at epoch {epoch + 1}, step {part['position']} of "
                               f"{steps}" + (f"; checkpoint saved to {checkpoint}"
                                             if checkpoint is not None else ""))
                    history.stopped = "interrupted"
                    return history
            finally:
                bar.close()
                batches.close()
            train_seconds = time.perf_counter() - started
            seen = max(part["seen"], 1)
            record = {"epoch": epoch + 1, "step": step, "lr": optimizer.lr,
                      "train_loss": part["loss_sum"] / seen,
                      "train_acc": part["correct"] / seen if part["has_correct"] else None}
            if val_loader is not None:
                result = evaluate(model, val_loader, loss_fn)
                record.update(val_loss=result.loss, val_acc=result.accuracy)
            record.update(seconds=time.perf_counter() - started,
                          images_per_s=part["seen"] / max(train_seconds, 1e-9))
            history.records.append(record)
            epoch += 1
            _say(progress, _describe(record, epochs))
            for cb in on_epoch:
                cb(record)
            if checkpoint is not None:
                _save(checkpoint, model, optimizer, loader, history, epoch, step, epochs, None,
                      meta)
                good = checkpoint
            if stop.requested:
                _say(True, f"interrupted after epoch {epoch}" + (
                    f"; checkpoint saved to {checkpoint}" if checkpoint is not None else ""))
                history.stopped = "interrupted"
                return history
    return history


def _describe(record: dict[str, Any], epochs: int) -> str:
    """One line summarising an epoch's record."""
    def pct(v: float | None) -> str:
        return "" if v is None else f" acc {100 * v:.2f}%"
    text = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"
            f"{pct(record['train_acc'])}")
    if "val_loss" in record:
        text += f" | val loss {record['val_loss']:.4f}{pct(record['val_acc'])}"
    return text + (f" | lr {record['lr']:.4g} | {record['seconds']:.1f} s "
                   f"({record['images_per_s']:.0f} img/s)")
