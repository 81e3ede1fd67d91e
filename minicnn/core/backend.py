"""The one module that knows the array libraries: NumPy (CPU, the default) and CuPy (NVIDIA GPU).

**Arrays decide.** Code that computes takes the array module from the arrays it is given, as
Chainer's ``get_array_module`` does, so the same layer code runs on both and a model moved with
``model.to("cupy")`` computes on the GPU whatever the global backend says::

    from minicnn.core import backend
    xp = backend.get_array_module(x)
    y = xp.maximum(x, 0)

The global backend (``backend.xp``, chosen with ``minicnn.set_backend("cupy")`` or the
environment variable ``MINICNN_BACKEND=cupy``) is only the *default* for new parameters and new
data. The variable is applied on first use (so an unusable choice is reported where it is used,
e.g. as the command line's one-line error, not at import).
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy

BACKENDS = ("numpy", "cupy")

# The active array module (numpy or cupy) and its name. Both are set by ``set_backend``; until
# then, the module-level ``__getattr__`` below applies MINICNN_BACKEND on first access.
xp: ModuleType
name: str

default_dtype = numpy.float32
"""The dtype of new parameters and of data batches; float64 is for gradient checks."""


class BackendError(RuntimeError):
    """The requested backend cannot run here (CuPy missing, or no GPU visible)."""


def _import_cupy() -> ModuleType:
    """Import CuPy and check that a GPU is visible; raise one clear BackendError otherwise."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed here "
            f"({type(exc).__name__}: {exc}); install it with pip install -e \".[gpu]\" "
            "(cupy-cuda13x; for CUDA 12 use cupy-cuda12x)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendError(
            f"backend 'cupy': CuPy is installed but no GPU is visible ({type(exc).__name__}: "
            f"{exc}); use --backend numpy") from None
    if count < 1:
        raise BackendError("backend 'cupy': CuPy is installed but no GPU is visible; "
                           "use --backend numpy")
    return cupy


def get_module(backend_name: str) -> ModuleType:
    """Return the array module for a backend name ('numpy' or 'cupy')."""
    if backend_name == "numpy":
        return numpy
    if backend_name == "cupy":
        return _import_cupy()
    raise ValueError(f"unknown backend {backend_name!r}: expected one of {BACKENDS}")


def set_backend(backend_name: str) -> None:
    """Make ``backend_name`` ('numpy' or 'cupy') the active backend for new arrays.

    Existing models keep their arrays where they are; move them with ``model.to(name)``.
    """
    global xp, name
    xp = get_module(backend_name)
    name = backend_name


def get_backend() -> str:
    """The active backend's name."""
    if "name" not in globals():
        _apply_environment()
    return name


def _apply_environment() -> None:
    set_backend(os.environ.get("MINICNN_BACKEND", "").strip().lower() or "numpy")


def __getattr__(attribute: str) -> Any:
    if attribute in ("xp", "name"):
        _apply_environment()
        return globals()[attribute]
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def is_cupy_array(a: Any) -> bool:
    """True when ``a`` is a CuPy array (without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


def module_of(a: Any) -> ModuleType:
    """The array module that owns ``a`` (numpy for NumPy arrays, cupy for CuPy arrays)."""
    if is_cupy_array(a):
        import cupy
        return cupy
    return numpy


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module to compute with for ``arrays``: cupy if any of them is a CuPy array,
    else numpy (``None`` entries and plain numbers are ignored)."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy
            return cupy
    return numpy


def to_numpy(a: Any) -> numpy.ndarray:
    """Copy an array of either backend to a NumPy array on the host."""
    if is_cupy_array(a):
        return a.get()
    return numpy.asarray(a)


def to_backend(a: Any, backend_name: str | None = None) -> Any:
    """Move an array to ``backend_name`` (default: the active backend); no copy if already there."""
    target = get_backend() if backend_name is None else backend_name
    if target == "numpy":
        return to_numpy(a)
    module = get_module(target)
    return module.asarray(a)


def synchronize(*arrays: Any) -> None:
    """Wait for queued GPU work to finish (no-op on NumPy); call before reading a clock. With
    arrays, their module decides; without, the global backend."""
    module = get_array_module(*arrays) if arrays else (None if get_backend() == "numpy" else xp)
    if module is not None and module is not numpy:
        module.cuda.get_current_stream().synchronize()

