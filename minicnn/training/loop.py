"""The training loop: ``fit`` and its one step, ``train_step`` (evaluation lives in
``minicnn.training.evaluation``).

One training step (``train_step``) is::

    out = model.forward(x, training=True, check=False)
    l = loss.forward(out, y)
    optimizer.zero_grad()
    model.backward(loss.backward())        # adds dL/dparam; dL/dx of the input is skipped
    optimizer.step()

The model splits the batch among cores by itself (``minicnn.training.parallel``), so this loop
and one written by hand run at the same speed. Across processes (``mpiexec -n N``), ``fit(...,
comm=minicnn.training.distributed.init())`` trains data-parallel: one all-reduce per step, between
backward and the update (``minicnn.training.distributed``). This module never imports
``minicnn.models``: it works with any object that has forward, backward, train and parameters.

Losses and correct counts stay on the device in a small window and are read back to the host
every ``log_every`` steps, so a GPU is never made to wait for the host on every step; the
epoch means are still exact (every step's loss is summed). A NaN or inf loss stops training
(``TrainingError``, naming the epoch and step) without overwriting the last good checkpoint.
The first Ctrl-C stops at the end of the current step, saves a checkpoint (mid-epoch
included: a resumed run ends with bit-identical weights) and returns the History with
``stopped == "interrupted"``; a second Ctrl-C interrupts at once.

``fit(..., precision="fp16")`` computes each step in float16 on a working copy of the model
with float32 master weights and dynamic loss scaling (``minicnn.training.precision``); a step
whose gradients are not finite is skipped and counted (``skipped_steps`` and ``loss_scale`` in
each epoch's record), and too many skips in a row stop training with a TrainingError naming
the layer that overflowed. The default, "fp32", runs the step above unchanged.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from minicnn.core import backend, random
from minicnn.data import DataLoader
from minicnn.kernels import blas
from minicnn.training import distributed
from minicnn.training.callbacks import BestCheckpoint, EarlyStopping, TrainingRun
from minicnn.training.clipping import GradientClip
from minicnn.training.evaluation import (
    EVAL_BATCH_SIZE,
    correct_count,
    eval_loader,
    evaluate,
    model_backend,
)
from minicnn.training.history import EpochTally, History, StepWindow, describe_epoch
from minicnn.training.losses import SoftmaxCrossEntropy
from minicnn.training.precision import HalfStep, Precision

__all__ = ["fit", "train_step", "History", "TrainingError", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 5.0
"""Training stops as diverged when a step's loss exceeds this many times the run's first step's
loss (a fresh classifier starts near ln(classes); a run that learns stays far below that)."""


class TrainingError(RuntimeError):
    """Training stopped because it diverged: a loss became NaN or inf, or rose past
    ``DIVERGENCE_FACTOR`` times the first step's; ``history`` holds the finished epochs."""

    def __init__(self, message: str, history: History):
        super().__init__(message)
        self.history = history


def _train_loader(data: Any, batch_size: int, seed: int | None, model: Any) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=True, seed=seed,
                          backend_name=model_backend(model))
    raise TypeError(f"expected a DataLoader or an (x, y) pair, got {type(data).__name__}")


# --------------------------------------------------------------------------- training

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


class _StopRequest:
    """While active, the first Ctrl-C only sets ``requested``; a second one interrupts."""

    def __enter__(self) -> _StopRequest:
        self.requested, self._installed = False, False
        if threading.current_thread() is threading.main_thread():   # signals reach only it
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None
                          else signal.SIG_DFL)


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


class _Run:
    """The state of one ``fit`` call: what it trains, where it stands, where it saves."""

    def __init__(self, model: Any, optimizer: Any, loader: DataLoader, loss_fn: Any,
                 schedule: Any, checkpoint: Any, meta: dict[str, Any], epochs: int,
                 progress: bool, log_every: int, comm: Any = None, clip: Any = None):
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.sync: distributed.GradientSync | None = None   # made at the first step
        self.loss_fn, self.schedule, self.checkpoint = loss_fn, schedule, checkpoint
        self.meta, self.epochs, self.progress = meta, epochs, progress
        self.log_every = max(1, log_every)
        self.epoch, self.step, self.history = 0, 0, History()
        self.tally: EpochTally | None = None     # a resumed, unfinished epoch
        self.good = None                     # the checkpoint holding the last good weights
        self.first_loss: float | None = None  # the run's first step's loss (divergence rule)
        self.half: HalfStep | None = None    # the half-precision step (precision not fp32)
        self.scaler_state: dict[str, Any] | None = None   # a resumed run's loss scaler
        self.taken = True                    # whether the last step updated the weights
        self.clip: GradientClip | None = clip

    def resume(self, path: Any) -> None:
        """Restore weights, optimizer, RNGs, position and history from ``path``."""
        from minicnn.saving.checkpoint import CheckpointError, load_weights
        ckpt = load_weights(self.model, path)
        training = ckpt.meta.get("training")
        if not training or ckpt.optimizer_state is None:
            raise CheckpointError(f"{path}: not a training checkpoint (no optimizer state or "
                                  "training progress saved); cannot resume from it")
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
            self.loader.load_state_dict(training["loader"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: does not fit this run: {exc}") from None
        random.set_rng_state(training["rng"])
        self.epoch, self.step = training["epoch"], training["step"]
        self.tally = EpochTally(**training["partial"]) if training.get("partial") else None
        self.history, self.good = History(training["history"]), path
        self.first_loss = training.get("first_loss")
        self.scaler_state = training.get("scaler")
        if hasattr(self.schedule, "load_state_dict") and training.get("schedule"):
            self.schedule.load_state_dict(training["schedule"])

    def save(self, tally: EpochTally | None) -> None:
        """Write the checkpoint: at an epoch's end (tally None) or mid-epoch; with several
        ranks, rank 0 writes it (after receiving rank 0's BatchNorm statistics, all ranks hold
        the same state)."""
        if self.comm is not None:
            distributed.broadcast_state(self.model, self.comm)
        if self.checkpoint is None or (self.comm is not None and not self.comm.is_root):
            return
        from minicnn.saving.checkpoint import save
        training = {"epoch": self.epoch, "step": self.step, "epochs": self.epochs,
                    "partial": None if tally is None else asdict(tally),
                    "rng": random.get_rng_state(), "loader": self.loader.state_dict(),
                    "history": self.history.records, "first_loss": self.first_loss}
        if self.half is not None:
            training["scaler"] = self.half.scaler.state_dict()
        if hasattr(self.schedule, "state_dict"):
            training["schedule"] = self.schedule.state_dict()
        save(self.model, self.checkpoint, self.optimizer, training=training, **self.meta)
        if tally is None:
            self.good = self.checkpoint

    def train_step(self, x: Any, y: Any, stop: Any = None) -> tuple[Any, Any, int]:
        """One step at the schedule's lr; the loss and correct count stay on the device.
        Returns them and the step's sample count (all ranks'). With several ranks, a stop
        request on any rank stops every rank after this step, and each rank's random draws
        (dropout) come from its own generator, seeded from the shared global one."""
        if self.schedule is not None:
            self.optimizer.lr = float(self.schedule(self.step))
        if self.half is not None:
            loss, correct, self.taken = self.half(self.loss_fn, self.optimizer, x, y,
                                                  correct_count, self.clip)
            result: tuple[Any, Any] = (loss, correct)
            count = len(x)
        elif self.comm is None:
            result = train_step(self.model, self.loss_fn, self.optimizer, x, y, clip=self.clip)
            count = len(x)
        else:
            if self.sync is None:
                self.sync = distributed.GradientSync(self.model.parameters(), self.comm)
            self.sync.stop = bool(stop is not None and stop.requested)
            seeds = random.host_rng().integers(2**63, size=self.comm.size)
            with random.generator_scope(random.generator(int(seeds[self.comm.rank]))):
                result = train_step(self.model, self.loss_fn, self.optimizer, x, y, self.sync,
                                    self.clip)
            count = self.sync.count
        self.step += 1
        return (*result, count)

    def stopping(self, stop: Any) -> bool:
        """Whether to stop after this step: the local Ctrl-C request, or with several ranks
        the request any rank made before the last step (so all ranks stop at the same step)."""
        if self.comm is None:
            return stop.requested
        return self.sync is not None and self.sync.stopped

    def train_epoch(self, stop: _StopRequest, on_step: list) -> EpochTally:
        """Run the current epoch's remaining steps, or until a stop request (then save a
        mid-epoch checkpoint); return the epoch's tally."""
        tally, self.tally = self.tally or EpochTally(), None
        started = time.perf_counter() - tally.seconds
        steps = len(self.loader)
        bar = tqdm(total=steps, initial=tally.position, unit="step", file=sys.stderr,
                   desc=f"epoch {self.epoch + 1}/{self.epochs}",
                   disable=not (self.progress and sys.stderr.isatty()),
                   dynamic_ncols=True)
        window, mark = StepWindow(self.log_every), (time.perf_counter(), tally.seen)
        batches = iter(self.loader)
        try:
            for x, y in batches:
                loss, correct, count = self.train_step(x, y, stop)
                tally.position += 1
                if self.taken:
                    window.add(loss, correct, count)
                else:                         # a skipped step: not in the epoch's means
                    tally.skipped += 1
                    self._check_skips(tally)
                bar.update(1)
                for cb in on_step:
                    cb(self.step)
                if window.full() or tally.position == steps or self.stopping(stop):
                    mean_loss = self._drain(window, tally)
                    now = time.perf_counter()
                    rate = (tally.seen - mark[1]) / max(now - mark[0], 1e-9)
                    mark = (now, tally.seen)
                    postfix = {"loss": f"{mean_loss:.4f}"}
                    if tally.has_correct:
                        postfix["acc"] = f"{tally.correct / max(tally.seen, 1):.4f}"
                    postfix["img/s"] = f"{rate:.0f}"
                    bar.set_postfix(postfix, refresh=False)
                if self.stopping(stop):
                    break
            tally.seconds = time.perf_counter() - started
            if tally.position < steps:
                self.save(tally)             # now, while the loader knows where it stands
            return tally
        finally:
            bar.close()
            batches.close()

    def _check_skips(self, tally: EpochTally) -> None:
        """Raise TrainingError when the half-precision step has skipped too often."""
        if self.half is None or (why := self.half.diverged()) is None:
            return
        kept = f"the last good checkpoint is {self.good}" if self.good else \
            "no checkpoint was written"
        raise TrainingError(
            f"{self.half.precision.name} training diverged at epoch {self.epoch + 1}, step "
            f"{tally.position} of {len(self.loader)} (global step {self.step}): {why} "
            f"({kept})", self.history)

    def _drain(self, window: StepWindow, tally: EpochTally) -> float:
        """Add the window to the tally (one device read); raise TrainingError when a loss is
        NaN or inf or past ``DIVERGENCE_FACTOR`` times the run's first step's loss."""
        losses, counts, sizes = window.drain()
        if self.first_loss is None and losses and math.isfinite(losses[0]):
            self.first_loss = losses[0]
        limit = DIVERGENCE_FACTOR * self.first_loss if self.first_loss else math.inf
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > limit), None)
        if bad is not None:
            back = len(losses) - bad - 1       # steps taken since the bad one
            kept = f"the last good checkpoint is {self.good}" if self.good else \
                "no checkpoint was written"
            what = f"loss is {losses[bad]}" if not math.isfinite(losses[bad]) else \
                (f"loss {losses[bad]:.4g} is over {DIVERGENCE_FACTOR}x the first step's "
                 f"({self.first_loss:.4g})")
            raise TrainingError(
                f"{what} at epoch {self.epoch + 1}, step {tally.position - back} of "
                f"{len(self.loader)} (global step {self.step - back}): training diverged and "
                f"stopped ({kept}); try a smaller learning rate", self.history)
        if self.clip is not None:                # the norms, read with the losses
            norm_sum, norm_max, norm_count = self.clip.drain()
            tally.norm_sum += norm_sum
            tally.norm_max = max(tally.norm_max, norm_max)
            tally.norm_count += norm_count
        tally.loss_sum += sum(v * n for v, n in zip(losses, sizes))
        tally.seen += sum(sizes)
        if counts is None:
            tally.has_correct = False
        else:
            tally.correct += sum(counts)
        return sum(losses) / len(losses) if losses else math.nan

    def end_epoch(self, tally: EpochTally, val_loader: DataLoader | None) -> dict[str, Any]:
        """Validate, append the epoch's record to the history, and return it."""
        started = time.perf_counter()
        seen = max(tally.seen, 1)
        record = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.lr,
                  "train_loss": tally.loss_sum / seen if tally.seen else math.nan,
                  "train_acc": None if not tally.has_correct else
                  tally.correct / seen if tally.seen else math.nan}
        if val_loader is not None:
            if self.comm is not None:
                distributed.broadcast_state(self.model, self.comm)
            result = evaluate(self.model, val_loader, self.loss_fn,
                              batch_size=val_loader.batch_size, comm=self.comm)
            record.update(val_loss=result.loss, val_acc=result.accuracy)
        record.update(seconds=tally.seconds + time.perf_counter() - started,
                      images_per_s=tally.seen / max(tally.seconds, 1e-9))
        if self.half is not None:
            record.update(skipped_steps=tally.skipped, loss_scale=self.half.scaler.scale)
        if tally.norm_count:
            record.update(grad_norm=tally.norm_sum / tally.norm_count, grad_norm_max=tally.norm_max)
        self.history.records.append(record)
        self.epoch += 1
        return record


def fit(model: Any, train_data: Any, epochs: int, optimizer: Any, loss: Any = None,
        val_data: Any = None, schedule: Any = None, callbacks: Iterable[Any] = (),
        batch_size: int = 128, seed: int | None = None, checkpoint: Any = None,
        resume: Any = False, meta: dict[str, Any] | None = None, progress: bool = True,
        log_every: int = 20, eval_batch_size: int = EVAL_BATCH_SIZE,
        workers: int | None = None, comm: Any = None, verbose: bool = True,
        early_stop: int | None = None, best_checkpoint: Any = None,
        precision: Any = "fp32", clip_norm: float | None = None,
        clip_value: float | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs with ``optimizer`` and return the History.

    train_data: a DataLoader, or an (x, y) pair batched here (``batch_size``, shuffled with
    ``seed``). loss: default SoftmaxCrossEntropy(). val_data: a DataLoader or (x, y) pair
    (pairs use the training loader's transform), evaluated after every epoch in batches of
    ``eval_batch_size``. schedule: maps the global step to the lr (one with ``on_epoch_end``,
    such as ``ReduceLROnPlateau``, also sees each epoch's record; its ``state_dict`` is saved).
    callbacks: ``minicnn.training.callbacks`` objects (EarlyStopping, BestCheckpoint,
    CSVLogger, TensorBoard, or your own with ``on_train_begin``, ``on_step_end``,
    ``on_epoch_end``), or plain functions ``cb(record)``. clip_norm / clip_value: clip the
    gradients by global L2 norm / by value before each update (``minicnn.training.clipping``);
    each epoch's record then has ``grad_norm`` (mean over its steps) and ``grad_norm_max``.
    checkpoint: a path written after every epoch and on Ctrl-C (with ``meta`` merged into its
    metadata); resume: True to continue from ``checkpoint``, or the path of a checkpoint to
    continue from. Losses are read back every ``log_every`` steps. Raises TrainingError if the
    loss becomes NaN or inf, or a step's loss exceeds ``DIVERGENCE_FACTOR`` times the first
    step's (see ``TrainingError``). workers: caps the replicas the model splits each NumPy step
    among during this call (default: the model's own ``workers``; see
    ``minicnn.training.parallel``).
    progress: progress bars, shown only on a terminal; verbose: one summary line per epoch.
    early_stop: stop when the validation loss has not improved for this many epochs
    (``EarlyStopping(early_stop)``); best_checkpoint: a path that keeps the model of the best
    validation loss so far (``BestCheckpoint(best_checkpoint)``). The
    training loader's transform is kept as ``model.input_transform`` (checkpoints save it, and
    ``predict``/``evaluate`` apply it to raw images).

    comm: a communicator (``minicnn.training.distributed.init()``); with several ranks every
    rank calls ``fit`` alike and they train data-parallel: the loader's batches are the global
    batches, each rank takes its shard (``DataLoader.set_shard``), rank 0's weights are broadcast
    first, gradients, losses and metrics are summed over the ranks, and only rank 0 shows
    progress and writes ``checkpoint``; workers default to the cores per rank (BLAS
    single-threaded when that is 1). Callbacks run on every rank, with the global figures.

    precision: "fp32" (default), "fp16" or "bf16" (or a ``minicnn.training.precision.Precision``
    with loss-scaler options): compute in half precision with the model's float32 parameters as
    master weights and dynamic loss scaling; skipped steps (non-finite gradients) are left out
    of the epoch's means and counted in its record (``skipped_steps``, with ``loss_scale``).
    bf16 is refused where the array module has no bfloat16 (NumPy). One process only.
    """
    policy = Precision.of(precision)
    if policy.enabled and comm is not None and comm.size > 1:
        raise ValueError(f"fit: precision={policy.name!r} runs in one process only; train "
                         "data-parallel in fp32")
    loader = _train_loader(train_data, batch_size, seed, model)
    if comm is not None and comm.size > 1:
        loader.set_shard(comm.rank, comm.size)
        progress = progress and comm.is_root
        workers = distributed.cores_per_rank() if workers is None else workers
    val_loader = None if val_data is None else eval_loader(val_data, eval_batch_size, model,
                                                           loader.transform)
    meta = dict(meta or {})
    if hasattr(loader.transform, "config"):
        meta.setdefault("transform", loader.transform.config())
        model.input_transform = loader.transform
    if hasattr(loader.augment, "config"):              # what the model was trained with
        meta.setdefault("augment", loader.augment.config())
    if early_stop is not None and (val_loader is None or early_stop < 1):
        raise ValueError("fit: early_stop needs val_data and a patience of at least 1 epoch")
    clip = GradientClip(clip_norm, clip_value) if clip_norm or clip_value else None
    callbacks = list(callbacks)
    if early_stop is not None:
        callbacks.append(EarlyStopping(early_stop))
    if best_checkpoint is not None:
        callbacks.append(BestCheckpoint(best_checkpoint))
    run = _Run(model, optimizer, loader, loss if loss is not None else SoftmaxCrossEntropy(),
               schedule, checkpoint, meta, epochs, progress, log_every, comm, clip)
    if resume:
        source = checkpoint if resume is True else resume
        if source is None:
            raise ValueError("fit: resume=True needs a checkpoint path")
        run.resume(source)
        if run.epoch >= epochs:
            _say(progress, f"already trained for {run.epoch} epochs (asked for {epochs})")
    if run.comm is not None:
        distributed.broadcast_parameters(model.parameters(), run.comm)
    if policy.enabled:
        run.half = HalfStep(model, policy)        # after resume: it copies the loaded weights
        if run.scaler_state is not None:
            run.half.scaler.load_state_dict(run.scaler_state)
    if hasattr(schedule, "on_epoch_end"):             # ReduceLROnPlateau: before the others
        callbacks.insert(0, schedule)
    on_epoch = [getattr(cb, "on_epoch_end", cb) for cb in callbacks
                if hasattr(cb, "on_epoch_end") or callable(cb)]
    on_step = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    saved_to = "" if checkpoint is None else f"; checkpoint saved to {checkpoint}"
    workers_before = model.__dict__.get("workers")
    if workers is not None:
        model.workers = workers
        if run.half is not None:
            run.half.work.workers = workers
    single_blas = blas.single_threaded() if run.comm is not None and \
        getattr(model, "workers", None) == 1 else contextlib.nullcontext()  # a core per rank
    loud = run.comm is None or run.comm.is_root
    for cb in callbacks:
        if hasattr(cb, "on_train_begin"):
            cb.on_train_begin(TrainingRun(model, run.history, meta, loud))
    params = model.parameters()
    xp = backend.get_array_module(params[0].data) if params else None
    errstate = getattr(xp, "errstate", None)         # NumPy's; CuPy does not warn
    quiet_floats = errstate(all="ignore") if errstate is not None else \
        contextlib.nullcontext()      # overflow is caught as a diverging loss, not warned about
    try:
        with single_blas, quiet_floats, _StopRequest() as stop:
            while run.epoch < epochs:
                tally = run.train_epoch(stop, on_step)
                if tally.position < len(loader):
                    _say(loud, f"interrupted at epoch {run.epoch + 1}, step {tally.position} of "
                               f"{len(loader)}{saved_to}")
                    run.history.stopped = "interrupted"
                    break
                record = run.end_epoch(tally, val_loader)
                _say(verbose and loud, describe_epoch(record, epochs))
                for cb in on_epoch:
                    cb(record)
                run.save(None)
                stopper = next((cb for cb in callbacks if getattr(cb, "stop_training", False)),
                               None)
                if stopper is not None:
                    _say(verbose and loud, getattr(stopper, "stop_reason", "") or
                         f"{type(stopper).__name__} stopped training")
                    run.history.stopped = "early stop"
                    break
                if run.comm is not None:          # every rank stops, or none
                    stop.requested = run.comm.allreduce_values([stop.requested])[0] > 0
                if stop.requested:
                    _say(loud, f"interrupted after epoch {run.epoch}{saved_to}")
                    run.history.stopped = "interrupted"
                    break
    finally:
        if workers is not None:
            if workers_before is None:
                del model.workers
            else:
                model.workers = workers_before
    return run.history
