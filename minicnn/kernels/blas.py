"""NumPy's BLAS (OpenBLAS): which CPU kernels it runs, and how many threads it uses.

Every Conv2D and Dense layer is a matrix multiply, so on the CPU most of a training step is
OpenBLAS's single-precision GEMM, and its speed depends on the kernels OpenBLAS picked when it
loaded. NumPy's OpenBLAS is built for many CPUs and picks by CPU model; the environment variable
``OPENBLAS_CORETYPE`` overrides that choice, and some machines set it to an older core on
purpose (older OpenBLAS builds computed wrong results on newer CPUs). On this project's AMD EPYC
(AVX-512), OpenBLAS picks its 'SkylakeX' AVX-512 kernels; ``OPENBLAS_CORETYPE=Haswell`` (AVX2)
makes the reference CNN's largest GEMM take 4.8 instead of 2.6 ms on one core. minicnn never
changes the setting; ``minicnn bench`` reports which kernels ran.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from minicnn.core import backend  # noqa: F401  (imports NumPy, which loads its OpenBLAS)

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = tuple(s.replace("set_num", "get_num") for s in _SETTERS)
_CORENAMES = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
              "openblas_get_corename64_", "openblas_get_corename")


@functools.cache
def openblas_library() -> Any | None:
    """The OpenBLAS shared library loaded in this process (NumPy's), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if any(hasattr(lib, name) for name in _SETTERS):
            return lib
    return None


def _function(lib: Any, names: tuple[str, ...]) -> Any | None:
    return next((getattr(lib, n) for n in names if hasattr(lib, n)), None)


def set_blas_threads(count: int) -> int | None:
    """Set OpenBLAS's thread count; returns the previous count, or None if it cannot."""
    lib = openblas_library()
    setter = _function(lib, _SETTERS) if lib is not None else None
    getter = _function(lib, _GETTERS) if lib is not None else None
    if setter is None or getter is None:
        return None
    previous = int(getter())
    setter(ctypes.c_int(count))
    return previous


def can_set_threads() -> bool:
    """True when OpenBLAS's thread count can be read and set here."""
    lib = openblas_library()
    return lib is not None and _function(lib, _SETTERS) is not None and \
        _function(lib, _GETTERS) is not None


_single_lock = threading.Lock()
_single_users = 0
_threads_before: int | None = None


@contextmanager
def single_threaded() -> Iterator[None]:
    """OpenBLAS runs single-threaded inside this block (for threads that each run their own
    matrix multiplies); the previous count comes back when the last overlapping block ends."""
    global _single_users, _threads_before
    with _single_lock:
        if _single_users == 0:
            _threads_before = set_blas_threads(1)
        _single_users += 1
    try:
        yield
    finally:
        with _single_lock:
            _single_users -= 1
            if _single_users == 0 and _threads_before is not None:
                set_blas_threads(_threads_before)


def corename() -> str | None:
    """The name of the kernels OpenBLAS runs ('Haswell', 'SkylakeX', ...), or None."""
    lib = openblas_library()
    getter = _function(lib, _CORENAMES) if lib is not None else None
    if getter is None:
        return None
    getter.restype = ctypes.c_char_p
    return getter().decode()


def kernels() -> str:
    """'<name> kernels', and the environment setting that forced them if one did."""
    text = f"{corename() or 'unknown'} kernels"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return f"{text}, forced by OPENBLAS_CORETYPE={forced}" if forced else text


AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
"""The AVX-512 subsets that OpenBLAS's SkylakeX kernels need."""
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def slow_kernels_note() -> str | None:
    """A one-line note when ``OPENBLAS_CORETYPE`` holds OpenBLAS to kernels without AVX-512 on
    a CPU that has it (matrix multiplies then run at about half speed), else None."""
    forced, name = os.environ.get("OPENBLAS_CORETYPE"), corename()
    if not forced or name is None or name.lower() in AVX512_CORES \
            or not AVX512_FLAGS <= cpu_flags():
        return None
    return (f"note: OPENBLAS_CORETYPE={forced} holds OpenBLAS to its {name} kernels on this "
            "AVX-512 CPU, so matrix multiplies run at about half speed; unset OPENBLAS_CORETYPE "
            "and OPENBLAS_L2_SIZE for this command if your NumPy is current")
