"""Let the C allocator keep freed memory for reuse, so a training step stops page-faulting.

Each training step allocates and frees the same large NumPy arrays (activations, gradients,
masks: about 100 MB for the reference CNN at batch 128). By default glibc serves blocks that
large with mmap and gives them back to the kernel when freed (or trims the heap), so the next
step gets fresh pages, and the kernel zeroes each 4 KiB page on first touch: on a 2-core
machine that cost a third of the step. Raising glibc's mmap and trim thresholds keeps freed
blocks in the heap, where the next step's arrays of the same sizes reuse them.

This retunes malloc for the whole process, so it is never applied on import: the ``minicnn``
command line applies it for the commands that run models (train, evaluate, predict, bench),
and a script gets the same speed by calling it once at its start::

    import minicnn.kernels.allocator
    minicnn.kernels.allocator.keep_freed_memory()

Only glibc (Linux) is touched, through ``mallopt``; elsewhere this does nothing. Set the
environment variable ``MINICNN_KEEP_FREED_MEMORY=0`` to leave the allocator alone, even when
the command line or a script asks for it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 << 20       # glibc's largest allowed: blocks below 32 MiB come from the heap
TRIM_THRESHOLD = 1 << 30        # keep up to 1 GiB of freed heap before giving it back

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they were set."""
    global _applied
    if _applied or os.environ.get("MINICNN_KEEP_FREED_MEMORY", "1") == "0" or \
            not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
