"""Read an untrusted ``.npz`` archive within budgets: sizes are checked before anything is
allocated or inflated.

``numpy.load`` trusts what a file says: a ``.npy`` header may claim terabytes, and a zip
member may inflate a thousandfold. Here every member's declared size (from the zip directory,
which ``zipfile`` also enforces while inflating) is checked against a cap before it is read,
every ``.npy`` header is parsed and its shape and dtype checked against the member's real size
before the array is made, and pickled object arrays are refused. Every failure is one
``NpzError`` whose message says what was wrong (callers add the file name).
"""
from __future__ import annotations

import ast
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy

MAX_MEMBERS = 100_000
"""Most arrays one archive may hold."""
MAX_TOTAL_BYTES = 4 << 30
"""Most bytes all members may inflate to together (4 GiB)."""
MAX_HEADER_BYTES = 64 << 10
"""Longest ``.npy`` header accepted (NumPy's own limit is 10,000 bytes by default)."""

_MAGIC = b"\x93NUMPY"


class NpzError(ValueError):
    """The archive is not a readable ``.npz`` within the budgets; the message says why."""


def read_npz(path: str | Path, max_total_bytes: int = MAX_TOTAL_BYTES,
             allowed_kinds: str = "biuf") -> dict[str, numpy.ndarray]:
    """All arrays of the ``.npz`` at ``path`` by name (without the ``.npy`` suffix).

    Members must be plain ``.npy`` arrays of a dtype kind in ``allowed_kinds`` (no objects,
    no structured or datetime dtypes), their inflated sizes adding up to at most
    ``max_total_bytes``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise NpzError(f"{len(infos)} arrays, more than the {MAX_MEMBERS:,} allowed")
            total = sum(info.file_size for info in infos)
            if total > max_total_bytes:
                raise NpzError(f"its arrays would take {total:,} bytes, more than the "
                               f"{max_total_bytes:,} allowed")
            arrays = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    arrays[name] = _read_npy(member, info.file_size, name, allowed_kinds)
            return arrays
    except NpzError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, ValueError, RuntimeError) as exc:
        raise NpzError(f"not a readable .npz archive, truncated or corrupt "
                       f"({type(exc).__name__}: {exc})") from None


def _read_npy(member: Any, size: int, name: str, allowed_kinds: str) -> numpy.ndarray:
    """One ``.npy`` member of ``size`` bytes: header checked, then exactly its data read."""
    magic = member.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC or magic[6] not in (1, 2, 3):
        raise NpzError(f"array {name!r} is not a .npy array")
    length_bytes = 2 if magic[6] == 1 else 4
    header_length = int.from_bytes(member.read(length_bytes), "little")
    if header_length > MAX_HEADER_BYTES:
        raise NpzError(f"array {name!r} has a {header_length:,}-byte header")
    try:
        header = ast.literal_eval(member.read(header_length).decode("latin1"))
        dtype = numpy.dtype(header["descr"])
        shape = tuple(int(d) for d in header["shape"])
        fortran = bool(header["fortran_order"])
    except (SyntaxError, ValueError, TypeError, KeyError, MemoryError, RecursionError) as exc:
        raise NpzError(f"array {name!r} has a malformed header ({type(exc).__name__})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in allowed_kinds or \
            dtype.subdtype is not None:
        raise NpzError(f"array {name!r} has dtype {dtype}; expected plain numbers "
                       f"(kinds {allowed_kinds!r}), never Python objects or pickles")
    if any(d < 0 for d in shape):
        raise NpzError(f"array {name!r} declares a negative dimension {shape}")
    count = 1
    for d in shape:
        count *= d                                   # Python ints: no overflow
    data_bytes = size - 8 - length_bytes - header_length
    if count * dtype.itemsize != data_bytes:
        raise NpzError(f"array {name!r} declares shape {shape} {dtype} "
                       f"({count * dtype.itemsize:,} bytes) but holds {max(data_bytes, 0):,}")
    data = member.read(data_bytes)
    if len(data) != data_bytes:
        raise NpzError(f"array {name!r} is truncated")
    array = numpy.frombuffer(data, dtype=dtype).copy()
    return array.reshape(shape, order="F" if fortran else "C")
