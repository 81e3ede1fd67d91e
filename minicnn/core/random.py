"""Random numbers: the global seed and generators (weight initialisers draw from it: they are
in ``minicnn.layers.initializers``).

The generator is **global to the process**, as ``torch.manual_seed``'s is: every thread draws
from it (NumPy's generators are thread-safe, but threads drawing at once get the numbers in no
fixed order). Code that needs its own stream uses ``generator(seed)``; the DataLoader has its
own for shuffling and augmentation. Inside ``generator_scope(g)`` the draws of layers
(``rng_for``) in that thread come from ``g`` instead: a model split among threads gives each
replica its own generator, seeded from the global one, so a split step is reproducible.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import numpy

from minicnn.core.modes import setting

__all__ = ["manual_seed", "generator", "host_rng", "get_rng_state", "set_rng_state",
           "generator_scope", "rng_for"]

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


def get_rng_state() -> dict[str, Any]:
    """The global generator's state, as a JSON-serialisable dict (for checkpoints)."""
    # NumPy builds a new dict on every read; its stubs type it only as a Mapping.
    return dict(_host_rng.bit_generator.state)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state returned by ``get_rng_state``."""
    _host_rng.bit_generator.state = state


_device_rngs: dict[str, Any] = {}
_scoped_rng: ContextVar[numpy.random.Generator | None] = ContextVar("minicnn_rng", default=None)


def generator_scope(gen: numpy.random.Generator) -> AbstractContextManager[None]:
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
