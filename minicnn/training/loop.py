"""The training loop: ``fit``, which drives a ``run.Run`` over the epochs with its callbacks;
its one step is ``step.train_step`` (evaluation lives in ``minicnn.training.evaluation``).

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
from collections.abc import Iterable
from typing import Any

from minicnn.core import backend
from minicnn.data import DataLoader
from minicnn.kernels import blas
from minicnn.training import distributed
from minicnn.training.callbacks import BestCheckpoint, EarlyStopping, TrainingRun
from minicnn.training.clipping import GradientClip
from minicnn.training.evaluation import EVAL_BATCH_SIZE, eval_loader, model_backend
from minicnn.training.history import History, describe_epoch
from minicnn.training.losses import SoftmaxCrossEntropy
from minicnn.training.precision import HalfStep, Precision
from minicnn.training.run import Run, StopRequest, say
from minicnn.training.step import DIVERGENCE_FACTOR, TrainingError, train_step

__all__ = ["fit", "train_step", "History", "TrainingError", "DIVERGENCE_FACTOR"]


def _train_loader(data: Any, batch_size: int, seed: int | None, model: Any) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=True, seed=seed,
                          backend_name=model_backend(model))
    raise TypeError(f"expected a DataLoader or an (x, y) pair, got {type(data).__name__}")


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
    run = Run(model, optimizer, loader, loss if loss is not None else SoftmaxCrossEntropy(),
               schedule, checkpoint, meta, epochs, progress, log_every, comm, clip)
    if resume:
        source = checkpoint if resume is True else resume
        if source is None:
            raise ValueError("fit: resume=True needs a checkpoint path")
        run.resume(source)
        if run.epoch >= epochs:
            say(progress, f"already trained for {run.epoch} epochs (asked for {epochs})")
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
        with single_blas, quiet_floats, StopRequest() as stop:
            while run.epoch < epochs:
                tally = run.train_epoch(stop, on_step)
                if tally.position < len(loader):
                    say(loud, f"interrupted at epoch {run.epoch + 1}, step {tally.position} of "
                               f"{len(loader)}{saved_to}")
                    run.history.stopped = "interrupted"
                    break
                record = run.end_epoch(tally, val_loader)
                say(verbose and loud, describe_epoch(record, epochs))
                for cb in on_epoch:
                    cb(record)
                run.save(None)
                stopper = next((cb for cb in callbacks if getattr(cb, "stop_training", False)),
                               None)
                if stopper is not None:
                    say(verbose and loud, getattr(stopper, "stop_reason", "") or
                         f"{type(stopper).__name__} stopped training")
                    run.history.stopped = "early stop"
                    break
                if run.comm is not None:          # every rank stops, or none
                    stop.requested = run.comm.allreduce_values([stop.requested])[0] > 0
                if stop.requested:
                    say(loud, f"interrupted after epoch {run.epoch}{saved_to}")
                    run.history.stopped = "interrupted"
                    break
    finally:
        if workers is not None:
            if workers_before is None:
                del model.workers
            else:
                model.workers = workers_before
    return run.history
