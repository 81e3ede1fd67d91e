"""Learning-rate schedules: small objects mapping a step number to a learning rate.

The training loop sets ``optimizer.lr = schedule(step)`` before each step (step = the
optimizer steps taken so far, from 0), so resuming a run needs no schedule state, except for
``ReduceLROnPlateau``, which also watches the validation loss at each epoch's end
(``on_epoch_end(record)``) and whose ``state_dict`` checkpoints save. ``WarmupLR`` puts a
linear warm-up before any of them. ``make_schedule(name, base_lr, total_steps, warmup_steps)``
builds one by name, for the command line and the recipes. Each equals its PyTorch namesake
stepped once per optimizer step (``tests/test_schedules_more.py``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["ConstantLR", "StepLR", "CosineLR", "OneCycleLR", "WarmupLR", "ReduceLROnPlateau",
           "SCHEDULES", "make_schedule"]


class ConstantLR:
    """lr(step) = base_lr."""

    def __init__(self, base_lr: float):
        self.base_lr = base_lr

    def __call__(self, step: int) -> float:
        return self.base_lr


class StepLR:
    """Step decay: lr(step) = base_lr * gamma ** (step // step_size)."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.base_lr, self.step_size, self.gamma = base_lr, step_size, gamma

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineLR:
    """Cosine decay from base_lr to min_lr over total_steps, then min_lr:
    lr(step) = min_lr + (base_lr - min_lr) * (1 + cos(pi * step / total_steps)) / 2."""

    def __init__(self, base_lr: float, total_steps: int, min_lr: float = 0.0):
        if total_steps < 1:
            raise ValueError(f"CosineLR: total_steps must be >= 1, got {total_steps}")
        self.base_lr, self.total_steps, self.min_lr = base_lr, total_steps, min_lr

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class OneCycleLR:
    """One cycle (Smith): cosine from max_lr / div_factor up to max_lr over the first
    ``pct_start`` of ``total_steps``, then cosine down to max_lr / (div_factor *
    final_div_factor) at the last step; as ``torch.optim.lr_scheduler.OneCycleLR`` with
    ``cycle_momentum=False`` (the momentum is not cycled)."""

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        if total_steps < 2 or not 0.0 < pct_start < 1.0 or div_factor <= 0 or \
                final_div_factor <= 0:
            raise ValueError(f"OneCycleLR: expected total_steps >= 2, 0 < pct_start < 1 and "
                             f"positive div factors, got total_steps={total_steps}, "
                             f"pct_start={pct_start}, div_factor={div_factor}, "
                             f"final_div_factor={final_div_factor}")
        self.max_lr, self.total_steps, self.pct_start = max_lr, total_steps, pct_start
        self.initial_lr = max_lr / div_factor
        self.final_lr = self.initial_lr / final_div_factor
        self.peak_step = float(pct_start * total_steps) - 1

    @staticmethod
    def _anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def __call__(self, step: int) -> float:
        step = min(step, self.total_steps - 1)
        if step <= self.peak_step:
            return self._anneal(self.initial_lr, self.max_lr, step / self.peak_step)
        pct = (step - self.peak_step) / (self.total_steps - 1 - self.peak_step)
        return self._anneal(self.max_lr, self.final_lr, pct)


class WarmupLR:
    """A linear warm-up, then ``schedule`` from its own step 0: for step < warmup_steps,
    lr = schedule(0) * (start_factor + (1 - start_factor) * step / warmup_steps); afterwards
    lr = schedule(step - warmup_steps). As PyTorch's ``SequentialLR([LinearLR(start_factor,
    total_iters=warmup_steps), schedule], milestones=[warmup_steps])``."""

    def __init__(self, schedule: Callable[[int], float], warmup_steps: int,
                 start_factor: float = 0.1):
        if warmup_steps < 1 or not 0.0 < start_factor <= 1.0:
            raise ValueError(f"WarmupLR: expected warmup_steps >= 1 and 0 < start_factor <= 1, "
                             f"got warmup_steps={warmup_steps}, start_factor={start_factor}")
        self.schedule, self.warmup_steps, self.start_factor = schedule, warmup_steps, \
            start_factor

    def __call__(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.schedule(step - self.warmup_steps)
        ramp = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return self.schedule(0) * ramp

    def __getattr__(self, name: str) -> Any:        # on_epoch_end, state_dict of a plateau
        if name == "schedule":
            raise AttributeError(name)
        return getattr(self.schedule, name)


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when the validation loss has not improved (by more than
    ``threshold``, relative) for more than ``patience`` epochs, then wait ``cooldown`` epochs;
    never below ``min_lr``. As ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode "min",
    threshold_mode "rel") stepped with the validation loss after each epoch. ``fit`` calls
    ``on_epoch_end(record)``; its state (lr, best, bad epochs, cooldown) is in checkpoints."""

    def __init__(self, base_lr: float, factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 monitor: str = "val_loss"):
        if not 0.0 < factor < 1.0 or patience < 0 or cooldown < 0 or threshold < 0:
            raise ValueError(f"ReduceLROnPlateau: expected 0 < factor < 1 and patience, "
                             f"cooldown, threshold >= 0, got factor={factor}, "
                             f"patience={patience}, cooldown={cooldown}, threshold={threshold}")
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.cooldown, self.min_lr, self.monitor = cooldown, min_lr, monitor
        self.lr, self.best = float(base_lr), math.inf
        self.bad_epochs = self.cooldown_left = 0

    def __call__(self, step: int) -> float:
        return self.lr

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        value = record.get(self.monitor)
        if value is None:
            raise ValueError(f"ReduceLROnPlateau watches {self.monitor}, which the epoch's "
                             f"record lacks: give fit val_data (keys: {', '.join(record)})")
        if value < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = float(value), 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if self.lr - new > 1e-8:
                self.lr = new
            self.cooldown_left, self.bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs,
                "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best = float(state["lr"]), float(state["best"])
        self.bad_epochs, self.cooldown_left = int(state["bad_epochs"]), int(state["cooldown_left"])


SCHEDULES = ("cosine", "step", "constant", "onecycle", "plateau")


def make_schedule(name: str, base_lr: float, total_steps: int, warmup_steps: int = 0
                  ) -> Callable[[int], float]:
    """An lr schedule over ``total_steps`` steps: 'cosine' (to 0 at the end), 'step' (x0.1 at
    each third of the run), 'constant', 'onecycle' (peaking at base_lr after 30%) or 'plateau'
    (x0.1 after 2 epochs without a better validation loss); with ``warmup_steps``, a linear
    warm-up from 0.1 * lr comes first and the schedule runs over the steps left."""
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(f"warm-up of {warmup_steps} steps: expected 0 <= warm-up < the run's "
                         f"{total_steps} steps")
    steps = max(1, total_steps - warmup_steps)
    schedule: Callable[[int], float]
    if name == "cosine":
        schedule = CosineLR(base_lr, total_steps=steps)
    elif name == "step":
        schedule = StepLR(base_lr, step_size=max(1, -(-steps // 3)), gamma=0.1)
    elif name == "constant":
        schedule = ConstantLR(base_lr)
    elif name == "onecycle":
        schedule = OneCycleLR(base_lr, total_steps=max(2, steps))
    elif name == "plateau":
        schedule = ReduceLROnPlateau(base_lr, factor=0.1, patience=1)
    else:
        raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    return WarmupLR(schedule, warmup_steps) if warmup_steps else schedule
