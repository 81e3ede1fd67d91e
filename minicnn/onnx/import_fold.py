"""Constant folding for ONNX import: the nodes whose inputs are all constants, evaluated with
NumPy at import time.

PyTorch's exporter leaves small shape computations in a graph (``x.view(x.size(0), -1)``
becomes Shape -> Gather -> Unsqueeze -> Concat -> Reshape) and Constant nodes; none of them is a
layer, so they are computed once here. ``Shape`` of a computed tensor is known from its static
shape, except the batch size, which stands as the marker ``BATCH`` (a value no real dimension
has): it may travel through indexing ops (Gather, Slice, Unsqueeze, Concat...) to reach a
Reshape, which reads it as "the batch axis"; arithmetic on it is refused, as the result
would depend on the batch size, which a minicnn model does not fix.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy

BATCH = numpy.int64(-(2 ** 62) + 7)
"""Stands for the batch size in a folded shape tensor."""

MAX_FOLDED_ELEMENTS = 1 << 24
"""Most elements one folded constant may have (64 MiB of float32): ConstantOfShape or Expand
of a huge shape is refused before anything is allocated."""


class FoldError(ValueError):
    """A constant node cannot be evaluated; the importer adds the node's name."""


Folder = Callable[[Sequence[Any], dict[str, Any], int], list[Any]]
"""fold(inputs (arrays or None for an omitted optional input), attributes, opset) -> outputs."""


def _has_batch(*arrays: Any) -> bool:
    return any(a is not None and a.dtype == numpy.int64 and bool((a == BATCH).any())
               for a in arrays)


def _check_size(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise FoldError(f"a negative dimension in shape {dims}")
    count = 1
    for d in dims:
        count *= d
    if count > MAX_FOLDED_ELEMENTS:
        raise FoldError(f"a constant of shape {dims} ({count:,} elements) is over the budget "
                        f"of {MAX_FOLDED_ELEMENTS:,}")
    return dims


def _axes(inputs: Sequence[Any], attrs: dict[str, Any], opset: int, since: int,
          index: int = 1) -> list[int] | None:
    """``axes`` as an attribute (before opset ``since``) or as input ``index`` (from it)."""
    if opset < since:
        axes = attrs.get("axes")
    else:
        axes = inputs[index] if len(inputs) > index else None
    return None if axes is None else [int(a) for a in numpy.asarray(axes).reshape(-1)]


def _constant(inputs, attrs, opset):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = attrs[key]
            if key == "value":
                return [value]
            dtype = numpy.float32 if "float" in key else numpy.int64
            return [numpy.asarray(value, dtype=dtype)]
    raise FoldError(f"a Constant with attribute(s) {sorted(attrs)} (expected value, "
                    "value_float(s) or value_int(s))")


def _gather(inputs, attrs, opset):
    data, indices = inputs
    axis = int(attrs.get("axis", 0))
    size = data.shape[axis] if -data.ndim <= axis < data.ndim else 0
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise FoldError(f"Gather indices {indices.tolist()} out of range for axis size {size}")
    return [numpy.take(data, indices.astype(numpy.int64), axis=axis)]


def _unsqueeze(inputs, attrs, opset):
    axes = _axes(inputs, attrs, opset, since=13)
    if axes is None:
        raise FoldError("Unsqueeze without axes")
    out = inputs[0]
    rank = out.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        out = numpy.expand_dims(out, axis)
    return [out]


def _squeeze(inputs, attrs, opset):
    axes = _axes(inputs, attrs, opset, since=13)
    data = inputs[0]
    return [numpy.squeeze(data) if axes is None else numpy.squeeze(data, tuple(axes))]


def _concat(inputs, attrs, opset):
    return [numpy.concatenate([a for a in inputs if a is not None], axis=int(attrs["axis"]))]


def _reshape(inputs, attrs, opset):
    data, shape = inputs
    target = [int(s) for s in shape]
    if not attrs.get("allowzero", 0):
        target = [data.shape[i] if s == 0 else s for i, s in enumerate(target)]
    if _has_batch(shape):
        raise FoldError("a Reshape of a constant to a shape holding the batch size")
    return [data.reshape(target)]


def _slice(inputs, attrs, opset):
    data = inputs[0]
    if opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = inputs[1], inputs[2]
        axes = inputs[3] if len(inputs) > 3 else None
        steps = inputs[4] if len(inputs) > 4 else None
    starts = [int(s) for s in numpy.asarray(starts).reshape(-1)]
    ends = [int(e) for e in numpy.asarray(ends).reshape(-1)]
    axes = list(range(len(starts))) if axes is None else \
        [int(a) for a in numpy.asarray(axes).reshape(-1)]
    steps = [1] * len(starts) if steps is None else \
        [int(s) for s in numpy.asarray(steps).reshape(-1)]
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise FoldError("a Slice with step 0")
        index[axis] = slice(start, end, step)   # NumPy clamps as ONNX does
    return [data[tuple(index)]]


def _cast(inputs, attrs, opset):
    from onnx import helper
    dtype = helper.tensor_dtype_to_np_dtype(int(attrs["to"]))
    if _has_batch(inputs[0]) and dtype != numpy.int64:
        raise FoldError("a Cast of the batch size")
    return [inputs[0].astype(dtype)]


def _constant_of_shape(inputs, attrs, opset):
    shape = _check_size(inputs[0].reshape(-1)) if not _has_batch(inputs[0]) else None
    if shape is None:
        raise FoldError("ConstantOfShape of a shape holding the batch size")
    value = attrs.get("value")
    value = numpy.zeros(1, numpy.float32) if value is None else value.reshape(-1)
    return [numpy.full(shape, value[0], dtype=value.dtype)]


def _arithmetic(fn: Callable[[Any, Any], Any]) -> Folder:
    def fold(inputs, attrs, opset):
        a, b = inputs
        if _has_batch(a, b):
            raise FoldError("arithmetic on the batch size (the result would depend on it)")
        numpy.broadcast_shapes(a.shape, b.shape)
        return [fn(a, b).astype(numpy.result_type(a, b))]
    return fold


def _integer_divide(a, b):
    return a // b if a.dtype.kind in "iu" else a / b


def _shape_of_constant(inputs, attrs, opset):
    return [numpy.asarray(inputs[0].shape, dtype=numpy.int64)]


def _transpose(inputs, attrs, opset):
    perm = attrs.get("perm")
    return [numpy.transpose(inputs[0], None if perm is None else [int(p) for p in perm])]


FOLDERS: dict[str, Folder] = {
    "Constant": _constant, "Identity": lambda i, a, o: [i[0]], "Gather": _gather,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat, "Reshape": _reshape,
    "Slice": _slice, "Cast": _cast, "ConstantOfShape": _constant_of_shape,
    "Shape": _shape_of_constant, "Transpose": _transpose,
    "Add": _arithmetic(numpy.add), "Sub": _arithmetic(numpy.subtract),
    "Mul": _arithmetic(numpy.multiply), "Div": _arithmetic(_integer_divide),
}
"""The operators evaluated when every input is a constant."""


def fold(op_type: str, inputs: Sequence[Any], attrs: dict[str, Any], opset: int) -> list[Any]:
    """The outputs of ``op_type`` on constant ``inputs``, each checked against the budget."""
    try:
        outputs = FOLDERS[op_type](inputs, attrs, opset)
    except FoldError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise FoldError(f"cannot evaluate it on constants ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())})") from None
    out = []
    for value in outputs:
        value = numpy.asarray(value)
        _check_size(value.shape)
        out.append(value)
    return out
