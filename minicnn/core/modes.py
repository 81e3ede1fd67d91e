"""Per-thread modes: gradient recording, the training/eval override, and "inside a model".

Each mode lives in a ``contextvars.ContextVar``, so it belongs to the thread (or asyncio task)
that set it: ``no_grad()`` in an inference thread leaves a training thread alone, and two
overlapping ``no_grad`` blocks in two threads each restore their own thread's mode. A new
thread starts with the defaults (gradients recorded, no override); code that hands work to
other threads runs it in a copy of its context (``contextvars.copy_context().run``), as
``minicnn.training.parallel`` does, so the modes travel with the work.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

_grad_enabled: ContextVar[bool] = ContextVar("minicnn_grad_enabled", default=True)
_training: ContextVar[bool | None] = ContextVar("minicnn_training", default=None)
_inside_model: ContextVar[bool] = ContextVar("minicnn_inside_model", default=False)


@contextmanager
def setting(var: ContextVar, value: object) -> Iterator[None]:
    """``var`` holds ``value`` inside this block, in this thread (or task) only."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def no_grad() -> AbstractContextManager[None]:
    """Inside this block (in this thread) layers keep nothing for backward: inference with less
    memory and time (Conv2D then also works through the batch in slices)."""
    return setting(_grad_enabled, False)


def grad_enabled() -> bool:
    """False inside ``no_grad()`` in this thread."""
    return _grad_enabled.get()


def training_mode(mode: bool | None) -> AbstractContextManager[None]:
    """Make every layer's ``training`` read ``mode`` inside this block (in this thread); None
    leaves each layer's own setting (``train()`` / ``eval()``) in force."""
    return nullcontext() if mode is None else setting(_training, bool(mode))


def training_override() -> bool | None:
    """The mode set by an enclosing ``training_mode`` block in this thread, or None."""
    return _training.get()


def inside_model() -> AbstractContextManager[None]:
    """Marks a model's forward: the model checked its input once, so its layers skip the
    NaN/inf scan (every later activation comes from a layer, not from the user)."""
    return setting(_inside_model, True)


def is_inside_model() -> bool:
    return _inside_model.get()
