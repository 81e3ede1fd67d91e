"""Random numbers: the global seed, and weight initialisation (He, Glorot, PyTorch's default).

Weights are drawn on the host from one seeded NumPy generator and then moved to the active
backend, so ``manual_seed(n)`` gives the same initial weights on NumPy and on CuPy.

The generator is **global to the process**, as ``torch.manual_seed``'s is: every thread draws
from it (NumPy's generators are thread-safe, but threads drawing at once get the numbers in no
fixed order). Code that needs its own stream uses ``generator(seed)``; the DataLoader has its
own for shuffling and augmentation. Inside ``generator_scope(g)`` the draws of layers
(``rng_for``) in that thread come from ``g`` instead: a model split among threads gives each
replica its own generator, seeded from the global one, so a split step is reproducible.
"""
from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Any, ContextManager

import numpy

from minicnn.core import backend
from minicnn.core.modes import setting

_host_rng = numpy.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed every random draw minicnn makes (weight init, dropout, shuffling defaults)."""
    global _host_rng
    _host_rng = numpy.random.default_rng(seed)
    _device_rngs.clear()


def generator(seed: int) -> numpy.random.Generator:
    """A new host generator with its own seed (leaves the global one alone)."""
    return numpy.random.default_rng(seed)


def host_rng() -> numpy.random.Generator:
    """The global host generator (used for initialisation, dropout masks and shuffling)."""
    return _host_rng


def get_rng_state() -> dict:
    """The global generator's state, as a JSON-serialisable dict (for checkpoints)."""
    return _host_rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restore a state returned by ``get_rng_state``."""
    _host_rng.bit_generator.state = state


_placeholders: ContextVar[bool] = ContextVar("minicnn_placeholders", default=False)


def placeholders() -> ContextManager[None]:
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
    return _new(shape, dtype, lambda: _host_rng.normal(0.0, std, size=shape))


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int, dtype: Any = None) -> Any:
    """Glorot (Xavier) uniform init: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return _new(shape, dtype, lambda: _host_rng.uniform(-limit, limit, size=shape))


def kaiming_uniform(shape: tuple[int, ...], fan_in: int, dtype: Any = None) -> Any:
    """PyTorch's default for Conv2d and Linear weights and biases: U(-1/sqrt(fan_in), +...).

    It is He (Kaiming) uniform init with the leaky-ReLU gain for a = sqrt(5), and the init the
    reference recipe's PyTorch figures were measured with.
    """
    limit = 1.0 / math.sqrt(fan_in)
    return _new(shape, dtype, lambda: _host_rng.uniform(-limit, limit, size=shape))


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


_device_rngs: dict[str, Any] = {}
_scoped_rng: ContextVar[numpy.random.Generator | None] = ContextVar("minicnn_rng", default=None)


def generator_scope(gen: numpy.random.Generator) -> ContextManager[None]:
    """Layers in this thread draw their NumPy random numbers from ``gen`` inside this block."""
    return setting(_scoped_rng, gen)


def rng_for(xp: Any) -> Any:
    """The generator layers draw from for array module ``xp`` (dropout masks): for NumPy the
    one of an enclosing ``generator_scope``, else the global one; for CuPy a device generator
    seeded once from the global one."""
    if xp is numpy:
        return _scoped_rng.get() or _host_rng
    if xp.__name__ not in _device_rngs:
        _device_rngs[xp.__name__] = xp.random.default_rng(int(_host_rng.integers(2**62)))
    return _device_rngs[xp.__name__]
