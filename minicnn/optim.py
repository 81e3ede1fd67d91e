"""SGD with momentum, Nesterov and weight decay, and learning-rate schedules.

The update is the one PyTorch documents for ``torch.optim.SGD`` (dampening 0)::

    g = grad + weight_decay * p
    v = momentum * v + g                 (v starts at 0, so the first v is g)
    d = g + momentum * v if nesterov else v      (d = g when momentum is 0)
    p = p - lr * d

Schedules are small objects mapping a step number to a learning rate; the training loop sets
``optimizer.lr = schedule(step)`` before each step, so resuming a run needs no schedule state.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from minicnn import backend
from minicnn.layers.base import Parameter


class SGD:
    """Stochastic gradient descent over a list of Parameters."""

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list")
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: expected lr > 0, momentum >= 0, weight_decay >= 0, got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.lr, self.momentum = float(lr), float(momentum)
        self.nesterov, self.weight_decay = bool(nesterov), float(weight_decay)
        self.velocity = [backend.module_of(p.data).zeros_like(p.data) for p in self.params] \
            if momentum else []
        self._scratch = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        """Apply one update to every parameter, in place (one scratch buffer each)."""
        for i, p in enumerate(self.params):
            xp = backend.get_array_module(p.data)
            scratch = self._scratch[i]
            if scratch is None or scratch.shape != p.data.shape or scratch.dtype != p.data.dtype:
                scratch = self._scratch[i] = xp.empty_like(p.data)
            g = p.grad
            if self.weight_decay:
                g = xp.multiply(p.data, self.weight_decay, out=scratch)
                g += p.grad
            if self.momentum:
                v = self.velocity[i]
                v *= self.momentum
                v += g
                if self.nesterov:
                    if g is p.grad:              # keep the gradient as it is
                        scratch[...] = g
                        g = scratch
                    g += self.momentum * v
                else:
                    g = v
            p.data -= xp.multiply(g, self.lr, out=scratch)

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and momentum buffers (arrays of the active backend)."""
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "velocity": list(self.velocity)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        velocity = state.get("velocity", [])
        if len(velocity) != len(self.velocity) or any(
                tuple(v.shape) != tuple(p.data.shape) for v, p in zip(velocity, self.params)):
            raise ValueError("SGD.load_state_dict: momentum buffers do not match the parameters "
                             f"({len(velocity)} buffers for {len(self.params)} parameters)")
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.nesterov, self.weight_decay = bool(state["nesterov"]), float(state["weight_decay"])
        self.velocity = [backend.get_array_module(p.data).asarray(backend.to_numpy(v))
                         .astype(p.data.dtype) for v, p in zip(velocity, self.params)]


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
