"""Weights in the safetensors format, and PyTorch ``state_dict`` files loaded into minicnn.

    save_weights(model, "model.safetensors")                 # minicnn's names and layouts
    load_weights(model, "model.safetensors")
    load_weights(model, "torch_model.safetensors")           # safetensors.torch.save_file(...)

A safetensors file is an 8-byte little-endian header length n, n bytes of a JSON object
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` and the raw little-endian tensor bytes, offsets counted from the end of the
header. It is read without pickle and within budgets: the header at most
``MAX_HEADER_BYTES``, every tensor's offsets in bounds, contiguous from 0 to the end of the
file with neither gap nor overlap, and ``end - begin = prod(shape) * itemsize``; a file
claiming terabytes is refused before anything is allocated. Every problem is one
``SafetensorsError`` line naming the file and the tensor.

Names and layouts. ``save_weights`` writes minicnn's names (``conv2d_1.weight``,
``batchnorm2d_1.running_mean``) and layouts, with ``"format": "minicnn"`` in the metadata.
Any other file is read as a PyTorch ``state_dict``: Linear's weight (out, in) is transposed
into Dense's (in, out), ``num_batches_tracked`` is ignored, and tensors are matched to the
model's layers by name when the names are minicnn's, else module by module (``0.weight`` /
``conv1.weight``: the prefixes in natural order, ``layer.10`` after ``layer.9``) against the
model's layers in order, each module's tensors checked against the layer's shapes; when that
order does not fit, by shape where a shape is unique. ``name_map`` {minicnn name: file name}
says explicitly.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy

from minicnn.core import backend
from minicnn.core.atomic import atomic_write
from minicnn.layers.base import Layer
from minicnn.layers.dense import Dense

__all__ = ["SafetensorsError", "save_weights", "load_weights", "read_safetensors",
           "write_safetensors", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100 << 20
"""Largest JSON header read (100 MiB, as the safetensors library)."""
MINICNN_FORMAT = "minicnn"

DTYPES: dict[str, numpy.dtype] = {
    "F16": numpy.dtype("<f2"), "F32": numpy.dtype("<f4"), "F64": numpy.dtype("<f8"),
    "I8": numpy.dtype("i1"), "I16": numpy.dtype("<i2"), "I32": numpy.dtype("<i4"),
    "I64": numpy.dtype("<i8"), "U8": numpy.dtype("u1"), "U16": numpy.dtype("<u2"),
    "U32": numpy.dtype("<u4"), "U64": numpy.dtype("<u8"), "BOOL": numpy.dtype("?"),
}
"""The safetensors dtypes read, as little-endian NumPy dtypes (no BF16/F8: NumPy lacks them)."""
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_IGNORED = ("num_batches_tracked",)


class SafetensorsError(ValueError):
    """A safetensors file that is unreadable, over a budget, or does not fit the model; one
    line naming the file (and the tensor)."""


# --------------------------------------------------------------------------- the format

def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any],
                      metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` {name: array (either backend)} in the safetensors format, atomically;
    the header is padded with spaces to a multiple of 8 bytes (aligned data)."""
    host = {name: numpy.ascontiguousarray(backend.to_numpy(a)) for name, a in tensors.items()}
    header: dict[str, Any] = {}
    offset = 0
    for name, array in host.items():
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if numpy.dtype(dtype) not in _NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {array.dtype}, which "
                                   "safetensors does not hold here")
        host[name] = array.astype(dtype, copy=False)
        header[name] = {"dtype": _NAMES[numpy.dtype(dtype)], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)

    def write(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for array in host.values():
            f.write(array.tobytes())
    return atomic_write(path, write)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, numpy.ndarray],
                                                       dict[str, str]]:
    """({name: array}, metadata) of a safetensors file, in the header's order, each tensor
    checked before it is read (see the module docstring)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries, metadata, start = _read_header(f, size, path)
            tensors = {}
            for name, (dtype, shape, begin, end) in entries.items():
                f.seek(start + begin)
                data = f.read(end - begin)
                if len(data) != end - begin:
                    raise SafetensorsError(f"{path}: tensor {name!r} is cut short")
                tensors[name] = numpy.frombuffer(data, dtype).reshape(shape).copy()
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return tensors, metadata


def _read_header(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, Any], dict[str, str],
                                                               int]:
    if size < 8:
        raise SafetensorsError(f"{path}: {size} bytes is too short for a safetensors file")
    (length,) = struct.unpack("<Q", f.read(8))
    if length > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{path}: header of {length:,} bytes is over the budget of "
                               f"{MAX_HEADER_BYTES:,}")
    if 8 + length > size:
        raise SafetensorsError(f"{path}: header of {length:,} bytes runs past the end of the "
                               f"file ({size:,} bytes)")
    try:
        header = json.loads(f.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SafetensorsError(f"{path}: the header is not JSON ({type(exc).__name__})") \
            from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    entries = {name: _entry(name, value, path) for name, value in header.items()}
    data_size = size - 8 - length
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if begin != position:
            raise SafetensorsError(f"{path}: tensor {name!r} starts at byte {begin:,}, expected "
                                   f"{position:,} ({'overlapping' if begin < position else 'a gap'}"
                                   " in the data)")
        position = end
    if position != data_size:
        raise SafetensorsError(f"{path}: the tensors hold {position:,} bytes but the file has "
                               f"{data_size:,} after the header")
    return entries, metadata, 8 + length


def _entry(name: str, value: Any, path: Path) -> tuple[numpy.dtype, tuple[int, ...], int, int]:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{path}: tensor {name!r}: expected dtype, shape and "
                               f"data_offsets, got {value!r:.80}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype!r:.20}; readable: "
                               f"{', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise SafetensorsError(f"{path}: tensor {name!r} has shape {shape!r:.80}")
    if not isinstance(offsets, list) or len(offsets) != 2 or \
            not all(type(o) is int and o >= 0 for o in offsets) or offsets[1] < offsets[0]:
        raise SafetensorsError(f"{path}: tensor {name!r} has data_offsets {offsets!r:.80}")
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise SafetensorsError(f"{path}: tensor {name!r} of shape {shape} ({dtype}) needs "
                               f"{nbytes:,} bytes, its offsets span {offsets[1] - offsets[0]:,}")
    return DTYPES[dtype], tuple(shape), offsets[0], offsets[1]


# --------------------------------------------------------------------------- models

def _weights(model: Layer) -> Iterator[tuple[str, str, Any]]:
    """(path of the layer, name, array) of every parameter and state array, layer by layer
    in the model's order, each layer's parameters before its state (as a state_dict)."""
    params = dict(model.named_parameters())
    state = dict(model.named_state())
    by_layer: dict[str, list[str]] = {}
    for name in list(params) + list(state):
        by_layer.setdefault(name.rpartition(".")[0], []).append(name)
    for path, _ in model.named_layers():
        for name in by_layer.pop(path, []):
            yield path, name, params[name].data if name in params else state[name]


def save_weights(model: Layer, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s parameters and state arrays (BatchNorm's running statistics) to the
    safetensors file ``path``, under minicnn's names and layouts."""
    tensors = {name: array for _, name, array in _weights(model)}
    return write_safetensors(path, tensors, dict(metadata or {}, format=MINICNN_FORMAT))


def _natural(name: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.]", name)]


def load_weights(model: Layer, path: str | os.PathLike,
                 name_map: dict[str, str] | None = None) -> Layer:
    """Set ``model``'s parameters and state from the safetensors file ``path`` (saved by
    ``save_weights``, or a PyTorch state_dict of the same architecture; see the module
    docstring for the matching); every tensor of the model must be found, with its shape.
    Returns the model."""
    tensors, metadata = read_safetensors(path)
    torch_layout = metadata.get("format") != MINICNN_FORMAT
    weights = list(_weights(model))
    layers = dict(model.named_layers())
    wanted = {name: (layer_path, array) for layer_path, name, array in weights}

    def transposed(name: str) -> bool:
        """Whether the file holds ``name`` transposed: torch's Linear weight is (out, in)."""
        return torch_layout and isinstance(layers[wanted[name][0]], Dense) and \
            name.rpartition(".")[2] == "weight"

    def expected(file_name: str, name: str) -> tuple[int, ...]:
        shape = tuple(wanted[name][1].shape)
        return shape[::-1] if transposed(name) else shape

    file_names = [n for n in tensors if n.rpartition(".")[2] not in _IGNORED]
    if name_map is not None:
        unknown = sorted(set(name_map) - set(wanted))
        if unknown:
            raise SafetensorsError(f"{path}: name_map names {unknown[0]!r}, which the model "
                                   "does not have")
        mapping = {name: name_map.get(name, name) for name in wanted}
    elif set(file_names) == set(wanted):
        mapping = {name: name for name in wanted}
    else:
        mapping = _match_modules(weights, tensors, file_names, expected, path)
    for name, file_name in mapping.items():
        if file_name not in tensors:
            raise SafetensorsError(f"{path}: no tensor {file_name!r} for {name}")
        shape = expected(file_name, name)
        if tuple(tensors[file_name].shape) != shape:
            raise SafetensorsError(f"{path}: tensor {file_name!r} has shape "
                                   f"{tuple(tensors[file_name].shape)}, {name} needs {shape}")
    unused = sorted(set(file_names) - set(mapping.values()))
    if unused:
        raise SafetensorsError(f"{path}: tensor {unused[0]!r} matches nothing in the model "
                               f"({len(unused)} unused)")
    params = dict(model.named_parameters())
    state: dict[str, Any] = {}
    for name, file_name in mapping.items():
        value = tensors[file_name]
        if value.dtype.kind not in "fiu" or (value.dtype.kind != "f" and name in params):
            raise SafetensorsError(f"{path}: tensor {file_name!r} has dtype {value.dtype}, "
                                   f"{name} is floating point")
        if transposed(name):
            value = value.T
        target = wanted[name][1]
        xp = backend.get_array_module(target)
        converted = xp.asarray(numpy.ascontiguousarray(value).astype(target.dtype))
        if name in params:
            params[name].data[...] = converted
        else:
            state[name] = converted
    model.load_named_state(state)
    return model


def _match_modules(weights: list[tuple[str, str, Any]], tensors: dict[str, numpy.ndarray],
                   file_names: list[str], expected: Any, path: Any) -> dict[str, str]:
    """{minicnn name: file name}: the file's modules (prefixes) in natural order against the
    model's layers in order, else by unique shapes."""
    ours: dict[str, list[str]] = {}
    for layer_path, name, _ in weights:
        ours.setdefault(layer_path, []).append(name)
    theirs: dict[str, list[str]] = {}
    for file_name in sorted(file_names, key=_natural):
        theirs.setdefault(file_name.rpartition(".")[0], []).append(file_name)

    def fits(layer_names: list[str], module_names: list[str]) -> tuple[dict[str, str] | None,
                                                                       str]:
        """(the pairs, "") when the module's tensors are the layer's, else (None, why)."""
        suffix = {n.rpartition(".")[2]: n for n in module_names}
        pairs = {}
        for name in layer_names:
            file_name = suffix.get(name.rpartition(".")[2])
            if file_name is None:
                module = module_names[0].rpartition(".")[0]
                return None, f"no tensor {module + '.' + name.rpartition('.')[2]!r} for {name}"
            if tuple(tensors[file_name].shape) != expected(file_name, name):
                return None, (f"tensor {file_name!r} has shape {tuple(tensors[file_name].shape)}"
                              f", {name} needs {expected(file_name, name)}")
            pairs[name] = file_name
        if len(pairs) != len(module_names):
            extra = sorted(set(module_names) - set(pairs.values()))
            layer = layer_names[0].rpartition(".")[0]
            return None, f"tensor {extra[0]!r} matches nothing in layer {layer}"
        return pairs, ""

    misfit = ""
    if len(ours) == len(theirs):
        mapping: dict[str, str] = {}
        for layer_names, module_names in zip(ours.values(), theirs.values()):
            pairs, misfit = fits(layer_names, module_names)
            if pairs is None:
                break
            mapping.update(pairs)
        else:
            return mapping
    mapping, taken = {}, set()
    for layer_path, layer_names in ours.items():
        candidates = [m for m in theirs if m not in taken and fits(layer_names, theirs[m])[0]]
        if not candidates and misfit:
            raise SafetensorsError(f"{path}: {misfit} (matching the file's modules in order)")
        if len(candidates) != 1:
            shapes = [expected(n, n) for n in layer_names]
            raise SafetensorsError(
                f"{path}: {len(candidates)} modules of the file fit layer {layer_path} "
                f"(shapes {shapes}) and the file's module order does not match the model's; "
                "pass name_map={minicnn name: file name}")
        taken.add(candidates[0])
        mapping.update(fits(layer_names, theirs[candidates[0]])[0] or {})
    return mapping
    mapping, taken = {}, set()
    for layer_path, layer_names in ours.items():
        candidates = [m for m in theirs if m not in taken and fits(layer_names, theirs[m])]
        if len(candidates) != 1:
            shapes = [expected(n, n) for n in layer_names]
            raise SafetensorsError(
                f"{path}: {len(candidates)} modules of the file fit layer {layer_path} "
                f"(shapes {shapes}) and the file's module order does not match the model's; "
                "pass name_map={minicnn name: file name}")
        taken.add(candidates[0])
        mapping.update(fits(layer_names, theirs[candidates[0]]) or {})
    return mapping
