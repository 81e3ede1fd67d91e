"""Run a memory-bound NumPy loop on slices of the batch in worker threads.

NumPy releases the GIL inside copies and ufunc loops, so copying or adding different samples
in different threads uses every core, while a single NumPy call runs on one core only (the
BLAS matrix multiplies are already multi-threaded). Work on GPU arrays, on small arrays, or
on a one-core machine runs inline.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from minicnn import backend

WORKERS = max(1, min(int(os.environ.get("MINICNN_NUM_THREADS", os.cpu_count() or 1)), 8))
MIN_ELEMENTS = 1 << 18   # below this, thread hand-off costs more than it saves

_pool: ThreadPoolExecutor | None = None


def map_batch(fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn(*arrays, out=out)`` computed slice by slice of the batch (axis 0) in worker threads;
    ``out`` is a new array like ``arrays[0]`` (same memory layout)."""
    out = backend.xp.empty_like(arrays[0])
    for_batch_slices(lambda b: fn(*(a[b] for a in arrays), out=out[b]), out.shape[0], out.size)
    return out


def for_batch_slices(fn: Callable[[slice], Any], batch: int, elements: int) -> None:
    """Call ``fn(s)`` for slices ``s`` that split range(batch) among the worker threads.

    ``fn`` must only touch samples in its slice. ``elements`` is the work's size, used to
    decide whether threads are worth it.
    """
    global _pool
    parts = min(WORKERS, batch)
    if parts < 2 or elements < MIN_ELEMENTS or backend.name != "numpy":
        fn(slice(0, batch))
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="minicnn")
    bounds = [batch * k // parts for k in range(parts + 1)]
    futures = [_pool.submit(fn, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]
    for f in futures:
        f.result()
