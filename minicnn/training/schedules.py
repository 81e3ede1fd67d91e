"""Learning-rate schedules: small objects mapping a step number to a learning rate.

The training loop sets ``optimizer.lr = schedule(step)`` before each step, so resuming a run
needs no schedule state. ``make_schedule(name, base_lr, total_steps)`` builds one by name, for
the command line and the recipes.
"""
from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["ConstantLR", "StepLR", "CosineLR", "SCHEDULES", "make_schedule"]


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


SCHEDULES = ("cosine", "step", "constant")


def make_schedule(name: str, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """An lr schedule over ``total_steps`` steps: 'cosine' (to 0 at the end), 'step' (x0.1 at
    each third of the run) or 'constant'."""
    if name == "cosine":
        return CosineLR(base_lr, total_steps=max(1, total_steps))
    if name == "step":
        return StepLR(base_lr, step_size=max(1, -(-total_steps // 3)), gamma=0.1)
    if name == "constant":
        return ConstantLR(base_lr)
    raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
