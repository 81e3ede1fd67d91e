"""Weight initialisers: He, Glorot, PyTorch's default (``kaiming_uniform``), zeros and ones.

Weights are drawn on the host from minicnn's one seeded NumPy generator
(``minicnn.core.random``) and then moved to the active backend, so ``manual_seed(n)`` gives the
same initial weights on NumPy and on CuPy. Inside ``placeholders()`` every initialiser returns
an array that takes no memory, so a model described by an untrusted file can be built and its
shapes checked before anything is allocated.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import numpy

from minicnn.core import backend
from minicnn.core.modes import setting
from minicnn.core.random import host_rng

__all__ = ["placeholders", "is_placeholder", "he_normal", "glorot_uniform", "kaiming_uniform",
           "zeros", "ones", "INITIALIZERS", "initialize", "initialize_bias"]

_placeholders: ContextVar[bool] = ContextVar("minicnn_placeholders", default=False)


def placeholders() -> AbstractContextManager[None]:
    """Inside this block (in this thread) every initializer here returns a placeholder: an
    array of the right shape and dtype that takes no memory (all strides 0), so a model can be
    built from an untrusted description and its shapes checked before anything is allocated."""
    return setting(_placeholders, True)


def is_placeholder(a: Any) -> bool:
    """True for an array made inside ``placeholders()``."""
    return isinstance(a, numpy.ndarray) and a.size > 1 and not any(a.strides)


def _new(shape: tuple[int, ...], dtype: Any, make: Any) -> Any:
    """``make()`` on the active backend in ``dtype`` (default float32), or a placeholder."""
    dtype = dtype or backend.default_dtype
    if _placeholders.get():
        return numpy.broadcast_to(numpy.zeros((), dtype=dtype), tuple(shape))
    return backend.xp.asarray(make(), dtype=dtype)


def he_normal(shape: tuple[int, ...], fan_in: int, dtype: Any = None) -> Any:
    """He (Kaiming) normal init for ReLU nets: N(0, 2 / fan_in), on the active backend."""
    std = math.sqrt(2.0 / fan_in)
    return _new(shape, dtype, lambda: host_rng().normal(0.0, std, size=shape))


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, dtype: Any = None) -> Any:
    """Glorot (Xavier) uniform init: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return _new(shape, dtype, lambda: host_rng().uniform(-limit, limit, size=shape))


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, dtype: Any = None) -> Any:
    """PyTorch's default for Conv2d and Linear weights and biases: U(-1/sqrt(fan_in), +...).

    It is He (Kaiming) uniform init with the leaky-ReLU gain for a = sqrt(5), and the init the
    reference recipe's PyTorch figures were measured with.
    """
    limit = 1.0 / math.sqrt(fan_in)
    return _new(shape, dtype, lambda: host_rng().uniform(-limit, limit, size=shape))


def zeros(shape: tuple[int, ...], dtype: Any = None) -> Any:
    """A new parameter array of zeros on the active backend (default dtype float32)."""
    return _new(shape, dtype, lambda: numpy.zeros(shape))


def ones(shape: tuple[int, ...], dtype: Any = None) -> Any:
    """A new parameter array of ones on the active backend (default dtype float32)."""
    return _new(shape, dtype, lambda: numpy.ones(shape))


INITIALIZERS = ("kaiming_uniform", "he", "glorot")


def initialize(name: str, shape: tuple[int, ...], fan_in: int, fan_out: int,
               dtype: Any = None) -> Any:
    """A weight array by scheme name: 'kaiming_uniform' (PyTorch's default), 'he' (He normal)
    or 'glorot' (Glorot uniform)."""
    if name == "kaiming_uniform":
        return kaiming_uniform(shape, fan_in, dtype)
    if name == "he":
        return he_normal(shape, fan_in, dtype)
    if name == "glorot":
        return glorot_uniform(shape, fan_in, fan_out, dtype)
    raise ValueError(f"unknown initialisation {name!r}: expected one of {INITIALIZERS}")


def initialize_bias(name: str, size: int, fan_in: int, dtype: Any = None) -> Any:
    """A bias vector: U(-1/sqrt(fan_in), +...) for 'kaiming_uniform' (as PyTorch), else zeros."""
    if name == "kaiming_uniform":
        return kaiming_uniform((size,), fan_in, dtype)
    return zeros((size,), dtype)
