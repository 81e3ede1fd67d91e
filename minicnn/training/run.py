"""One ``fit`` call's state and epoch loop (``Run``), and the Ctrl-C handling around it
(``StopRequest``): where the run stands (epoch, step, history, the epoch's tally), its resume
and checkpoint, one step at the schedule's lr (alone, in half precision or data-parallel), the
epoch's steps with progress and the loss window, and the end-of-epoch record. ``fit``
(``minicnn.training.loop``) drives it.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from minicnn.core import random
from minicnn.data import DataLoader
from minicnn.training import distributed
from minicnn.training.clipping import GradientClip
from minicnn.training.evaluation import correct_count, evaluate
from minicnn.training.history import EpochTally, History, StepWindow
from minicnn.training.precision import HalfStep
from minicnn.training.step import DIVERGENCE_FACTOR, TrainingError, train_step

__all__ = ["Run", "StopRequest", "say"]


class StopRequest:
    """While active, the first Ctrl-C only sets ``requested``; a second one interrupts."""

    def __enter__(self) -> StopRequest:
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


def say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message, file=sys.stderr)


class Run:
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

    def train_epoch(self, stop: StopRequest, on_step: list) -> EpochTally:
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
