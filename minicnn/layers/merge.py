"""Merge layers for graph models: Add (residual connections) and Concatenate."""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers.base import Layer


class Add(Layer):
    """Element-wise sum of inputs of one shape; the gradient flows unchanged to each."""

    per_sample = True

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        shapes = [tuple(s) for s in input_shapes]
        if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"{self.label()}: expected two or more inputs of one shape, got "
                             f"{' and '.join(map(str, shapes))}")
        return shapes[0]

    def forward(self, *xs: Any) -> Any:
        for x in xs:
            self.check_input(x)
        self.output_shape(*(x.shape for x in xs))   # no silent broadcasting
        self.save_for_backward(len(xs))
        out = xs[0] + xs[1]
        for x in xs[2:]:
            out += x
        return out

    def backward(self, grad_out: Any) -> tuple[Any, ...]:
        (count,) = self.pop_saved()
        return (grad_out,) * count


class Concatenate(Layer):
    """Join inputs along ``axis`` (default 1: channels of NCHW); backward splits the gradient."""

    per_sample = True

    def __init__(self, axis: int = 1):
        super().__init__()
        if axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch axis; use axis >= 1")
        self.axis = axis

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        shapes = [tuple(s) for s in input_shapes]
        axis = self.axis - 1 if self.axis > 0 else self.axis   # per-sample shapes lack the batch
        if any(not -len(s) <= axis < len(s) for s in shapes):
            raise ValueError(f"{self.label()}: axis {self.axis} is out of range for inputs of "
                             f"shape {' and '.join(map(str, shapes))}")
        rest = [s[:axis % len(s)] + s[axis % len(s) + 1:] for s in shapes]
        if len(shapes) < 2 or any(len(s) != len(shapes[0]) for s in shapes) or \
                any(r != rest[0] for r in rest):
            raise ValueError(f"{self.label()}: inputs must match except on axis {self.axis}, got "
                             f"{' and '.join(map(str, shapes))}")
        out = list(shapes[0])
        out[axis % len(out)] = sum(s[axis % len(s)] for s in shapes)
        return tuple(out)

    def forward(self, *xs: Any) -> Any:
        for x in xs:
            self.check_input(x)
        self.output_shape(*(tuple(x.shape[1:]) for x in xs))
        if any(x.shape[0] != xs[0].shape[0] for x in xs):
            raise ValueError(f"{self.label()}: expected inputs of one batch size, got "
                             f"{' and '.join(str(tuple(x.shape)) for x in xs)}")
        self.save_for_backward([x.shape[self.axis] for x in xs])
        return backend.get_array_module(*xs).concatenate(xs, axis=self.axis)

    def backward(self, grad_out: Any) -> tuple[Any, ...]:
        (sizes,) = self.pop_saved()
        bounds, total = [], 0
        for size in sizes[:-1]:
            total += size
            bounds.append(total)
        return tuple(backend.get_array_module(grad_out).split(grad_out, bounds, axis=self.axis))
