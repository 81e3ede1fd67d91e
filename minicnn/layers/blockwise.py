"""``blockwise(fn, *arrays)``: an element-wise computation run on cache-sized blocks.

An activation such as GELU is a chain of a dozen NumPy operations; on a (128, 64, 28, 28)
batch each one streams 25 MB through memory, and the chain is limited by that, not by the
arithmetic. Run on flat blocks of ``BLOCK`` elements, the temporaries of one block stay in the
CPU's cache and the chain runs about three times faster. On CuPy (one kernel per operation
over the whole array is what a GPU wants), for small or non-contiguous arrays, ``fn`` simply
runs on the whole arrays.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minicnn.core import backend

__all__ = ["BLOCK", "blockwise", "zeros_like"]

BLOCK = 131072
"""Elements per block: 512 KB of float32. Measured on the 2-core EPYC here, with results
written into their blocks (``into``), one-layer model step, 128x64x28x28: against 65536,
exact GELU 10-15% faster, SiLU and tanh GELU 3-5%, ELU about the same; 32768 was slower
still, 262144 no better overall."""


_ZEROS: dict[tuple[str, str], Any] = {}


def zeros_like(x: Any) -> Any:
    """A read-only array of zeros of x's shape and dtype, for ``xp.maximum(x, zeros_like(x))``:
    on NumPy (2.4) a maximum against an array is vectorised and about three times faster than
    against the scalar 0. Blocks share one cached buffer; CuPy gets the scalar's broadcast."""
    xp = backend.get_array_module(x)
    if backend.is_cupy_array(x) or x.size > BLOCK:
        return xp.zeros((), dtype=x.dtype)
    key = (xp.__name__, x.dtype.str)
    if key not in _ZEROS:
        zeros = xp.zeros(BLOCK, dtype=x.dtype)
        zeros.flags.writeable = False
        _ZEROS[key] = zeros
    return _ZEROS[key][:x.size].reshape(x.shape)


def blockwise(fn: Callable[..., Any], *arrays: Any, into: int = 0) -> Any:
    """``fn(*arrays)``, computed block by block: ``fn`` takes flat blocks of ``arrays`` (all of
    one shape) and returns an array, or a tuple of arrays, of the block's size; the results are
    assembled into arrays of the inputs' shape.

    With ``into=n``, ``fn`` also takes ``out=``: None (whole arrays: it allocates) or the
    blocks of the n results (an array for n = 1, else a tuple), of the first input's dtype,
    which it fills; written there by its last operation, a result needs no copy per block
    (about 15% of ELU's forward, measured)."""
    first = arrays[0]
    if backend.is_cupy_array(first) or first.size <= BLOCK or \
            not all(a.flags.c_contiguous for a in arrays):
        return fn(*arrays, out=None) if into else fn(*arrays)
    xp = backend.get_array_module(first)
    flats = [a.reshape(-1) for a in arrays]
    if into:
        outs: list[Any] = [xp.empty(first.size, dtype=first.dtype) for _ in range(into)]
        for start in range(0, first.size, BLOCK):
            blocks = tuple(out[start:start + BLOCK] for out in outs)
            fn(*(f[start:start + BLOCK] for f in flats), out=blocks[0] if into == 1 else blocks)
        shaped = tuple(out.reshape(first.shape) for out in outs)
        return shaped[0] if into == 1 else shaped
    outs = []
    single = False
    for start in range(0, first.size, BLOCK):
        results = fn(*(f[start:start + BLOCK] for f in flats))
        single = not isinstance(results, tuple)
        results = (results,) if single else results
        if not outs:
            outs = [xp.empty(first.size, dtype=r.dtype) for r in results]
        for out, result in zip(outs, results):
            out[start:start + BLOCK] = result
    shaped = tuple(out.reshape(first.shape) for out in outs)
    return shaped[0] if single else shaped
