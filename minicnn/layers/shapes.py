"""Output shapes a model can trust: ``checked_output_shape(layer, *input_shapes)``.

A layer that changes the shape declares it with ``output_shape``; the base class's default
says the shape is kept. For a layer that does not declare one (its class inherits the default),
models run one forward on a probe batch of two samples, under ``no_grad()`` in eval mode, when
they are built: a layer that changes the shape anyway is named in one line there, instead of a
wrong shape in ``summary`` and an error later that blames the next layer.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend, modes
from minicnn.layers import initializers

__all__ = ["declares_output_shape", "checked_output_shape"]


def declares_output_shape(layer: Any) -> bool:
    """Whether ``layer``'s class (or a base below Layer) defines ``output_shape``."""
    for klass in type(layer).__mro__:
        if "output_shape" in klass.__dict__:
            return not (klass.__name__ == "Layer" and klass.__module__ == "minicnn.layers.base")
    return False


def checked_output_shape(layer: Any, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
    """``layer.output_shape(*input_shapes)`` (per-sample shapes); for a layer without its own
    ``output_shape``, checked against a forward on a probe batch (ValueError naming the layer
    when they differ)."""
    shape = tuple(layer.output_shape(*input_shapes))
    params = layer.parameters()
    if declares_output_shape(layer) or len(input_shapes) != 1 or \
            any(initializers.is_placeholder(p.data) for p in params):
        return shape                      # a checkpoint being rebuilt: no weights to run yet
    xp = backend.get_array_module(params[0].data) if params else backend.xp
    dtype = params[0].data.dtype if params else backend.default_dtype
    probe_shape = (2, *input_shapes[0])
    size = 1
    for n in probe_shape:
        size *= n
    probe = xp.linspace(0.1, 1.0, size, dtype=dtype).reshape(probe_shape)
    try:
        with modes.no_grad(), modes.training_mode(False):
            out = layer.forward(probe)
    except Exception as exc:
        raise ValueError(f"{layer.label()} has no output_shape, and its forward on a probe batch "
                         f"{probe_shape} raised {type(exc).__name__}: {exc}") from None
    actual = tuple(int(n) for n in getattr(out, "shape", ())[1:])
    if actual != shape:
        raise ValueError(f"{layer.label()} changes the shape {tuple(input_shapes[0])} to "
                         f"{actual} but has no output_shape (which says the shape is kept): "
                         f"give {type(layer).__name__} an output_shape(input_shape)")
    return shape
