"""Whether the tests can use a GPU: one check shared by the test modules."""
from __future__ import annotations

from minicnn.core import backend


def gpu_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a GPU, else minicnn's one-line reason why not."""
    try:
        backend.get_module("cupy")
    except backend.BackendError as exc:
        return str(exc)
    return None
