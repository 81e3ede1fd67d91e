"""Optimizers: SGD, Adam, AdamW, RMSprop and Adagrad on a small shared base (``Optimizer``).

Each optimizer applies the update PyTorch documents for its namesake. SGD (dampening 0)::

    g = grad + weight_decay * p
    v = momentum * v + g                 (v starts at 0, so the first v is g)
    d = g + momentum * v if nesterov else v      (d = g when momentum is 0)
    p = p - lr * d

Adam (weight decay as an L2 term in the gradient) and AdamW (weight decay decoupled: the
weights shrink by lr * weight_decay before the step), at step t = 1, 2, ...::

    g = grad (+ weight_decay * p for Adam)          p = p * (1 - lr * weight_decay) for AdamW
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

RMSprop (``alpha`` the smoothing constant; centered subtracts the squared mean gradient) and
Adagrad (``lr_decay`` divides lr by 1 + (t - 1) * lr_decay)::

    g = grad + weight_decay * p                      g = grad + weight_decay * p
    s = alpha * s + (1 - alpha) * g * g              s = s + g * g
    a = alpha * a + (1 - alpha) * g   (centered)     p = p - lr_t * g / (sqrt(s) + eps)
    d = g / (sqrt(s - a * a [centered]) + eps)
    b = momentum * b + d;  p = p - lr * b   (p = p - lr * d without momentum)

Learning-rate schedules are in ``minicnn.training.schedules``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from minicnn.core import backend
from minicnn.layers.base import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "OPTIMIZERS"]


class Optimizer:
    """What every optimizer shares: its parameters, ``lr``, ``zero_grad`` and a state dict.

    A subclass lists its hyper-parameters in ``HYPER`` and its per-parameter buffers (arrays
    shaped like the parameters) in ``BUFFERS``; ``state_dict`` holds both (plus ``step``), so
    checkpoints save and restore any optimizer the same way.
    """

    HYPER: tuple[str, ...] = ("lr",)
    BUFFERS: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params = list(params)
        name = type(self).__name__
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name}: expected a finite lr > 0, got lr={lr!r}")
        self.lr = float(lr)
        self.step_count = 0

    def _zeros(self) -> list[Any]:
        return [backend.module_of(p.data).zeros_like(p.data) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, the step count and the buffers (lists of arrays)."""
        state = {k: getattr(self, k) for k in self.HYPER}
        state["step"] = self.step_count
        state.update({k: list(getattr(self, k)) for k in self.BUFFERS})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; buffers go where the parameters are."""
        name = type(self).__name__
        for key in self.BUFFERS:
            buffers = state.get(key, [])
            if len(buffers) != len(getattr(self, key)) or any(
                    tuple(b.shape) != tuple(p.data.shape) for b, p in zip(buffers, self.params)):
                raise ValueError(f"{name}.load_state_dict: {key} buffers do not match the "
                                 f"parameters ({len(buffers)} buffers for {len(self.params)} "
                                 "parameters)")
        for key in self.HYPER:
            value = state[key]
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        self.step_count = int(state.get("step", 0))
        for key in self.BUFFERS:
            setattr(self, key, [
                backend.get_array_module(p.data).asarray(backend.to_numpy(b)).astype(p.data.dtype)
                for b, p in zip(state[key], self.params)])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov and weight decay."""

    HYPER = ("lr", "momentum", "nesterov", "weight_decay")
    BUFFERS = ("velocity",)

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: expected momentum >= 0, weight_decay >= 0, got "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity = self._zeros() if momentum else []
        self._scratch = [None] * len(self.params)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.momentum and not state.get("momentum"):
            state = dict(state, velocity=[])
        super().load_state_dict(state)

    def step(self) -> None:
        """Apply one update to every parameter, in place (one scratch buffer each)."""
        self.step_count += 1
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


class Adam(Optimizer):
    """Adam (Kingma and Ba), with weight decay added to the gradient as PyTorch's Adam does."""

    HYPER = ("lr", "betas", "eps", "weight_decay")
    BUFFERS = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params: Iterable[Parameter], lr: float = 0.001,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError(f"{name}: expected eps > 0 and weight_decay >= 0, got eps={eps}, "
                             f"weight_decay={weight_decay}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.exp_avg, self.exp_avg_sq = self._zeros(), self._zeros()

    def step(self) -> None:
        """Apply one update to every parameter, in place."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1 ** self.step_count
        root_correction2 = math.sqrt(1.0 - beta2 ** self.step_count)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            xp = backend.get_array_module(p.data)
            g = p.grad
            if self.weight_decay and self.decoupled:
                p.data *= 1.0 - self.lr * self.weight_decay
            elif self.weight_decay:
                g = g + self.weight_decay * p.data
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * g * g
            denominator = xp.sqrt(v) / root_correction2 + self.eps
            p.data -= (self.lr / correction1) * m / denominator


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as PyTorch's AdamW."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 0.001,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def _check_non_negative(name: str, **values: float) -> None:
    bad = {k: v for k, v in values.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"{name}: expected " + ", ".join(f"{k} >= 0" for k in bad) + ", got "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


class RMSprop(Optimizer):
    """RMSprop (Hinton), with momentum and the centered variant, as PyTorch's RMSprop."""

    HYPER = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params: Iterable[Parameter], lr: float = 0.01, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False):
        super().__init__(params, lr)
        _check_non_negative("RMSprop", weight_decay=weight_decay, momentum=momentum)
        if not 0.0 <= alpha < 1.0 or not eps > 0:
            raise ValueError(f"RMSprop: expected alpha in [0, 1) and eps > 0, got alpha={alpha}, "
                             f"eps={eps}")
        self.alpha, self.eps, self.weight_decay = float(alpha), float(eps), float(weight_decay)
        self.momentum, self.centered = float(momentum), bool(centered)
        self.square_avg = self._zeros()
        self.grad_avg = self._zeros() if centered else []
        self.momentum_buffer = self._zeros() if momentum else []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for key, used in (("grad_avg", state.get("centered")), ("momentum_buffer",
                                                                  state.get("momentum"))):
            if not used:
                state[key] = []
        self.grad_avg = self._zeros() if state.get("centered") else []
        self.momentum_buffer = self._zeros() if state.get("momentum") else []
        super().load_state_dict(state)

    def step(self) -> None:
        """Apply one update to every parameter, in place."""
        self.step_count += 1
        a = self.alpha
        for i, (p, s) in enumerate(zip(self.params, self.square_avg)):
            xp = backend.get_array_module(p.data)
            g = p.grad if not self.weight_decay else p.grad + self.weight_decay * p.data
            s *= a
            s += (1.0 - a) * g * g
            if self.centered:
                m = self.grad_avg[i]
                m *= a
                m += (1.0 - a) * g
                denominator = xp.sqrt(s - m * m) + self.eps
            else:
                denominator = xp.sqrt(s) + self.eps
            if self.momentum:
                b = self.momentum_buffer[i]
                b *= self.momentum
                b += g / denominator
                p.data -= self.lr * b
            else:
                p.data -= self.lr * g / denominator


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), with lr decay and weight decay, as PyTorch's Adagrad."""

    HYPER = ("lr", "lr_decay", "weight_decay", "eps")
    BUFFERS = ("sum",)

    def __init__(self, params: Iterable[Parameter], lr: float = 0.01, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10):
        super().__init__(params, lr)
        _check_non_negative("Adagrad", lr_decay=lr_decay, weight_decay=weight_decay,
                            initial_accumulator_value=initial_accumulator_value)
        if not eps > 0:
            raise ValueError(f"Adagrad: expected eps > 0, got eps={eps}")
        self.lr_decay, self.weight_decay, self.eps = float(lr_decay), float(weight_decay), \
            float(eps)
        self.sum = self._zeros()
        for s in self.sum:
            s += initial_accumulator_value

    def step(self) -> None:
        """Apply one update to every parameter, in place."""
        self.step_count += 1
        lr = self.lr / (1.0 + (self.step_count - 1) * self.lr_decay)
        for p, s in zip(self.params, self.sum):
            xp = backend.get_array_module(p.data)
            g = p.grad if not self.weight_decay else p.grad + self.weight_decay * p.data
            s += g * g
            p.data -= lr * g / (xp.sqrt(s) + self.eps)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}
