"""The IDX format (MNIST's): read and write ``.idx`` files, raw or gzipped, within budgets.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), the
dimensions as big-endian uint32, then the values in C order. A gzipped file is inflated no
further than the size its header declares (``MAX_IDX_BYTES`` at most), and the header's shape
must match the payload's size before any array is made. Checksums (``payload_sha256``) are of
the *decompressed* payload, so a recompressed archive has the same one.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from minicnn.core.atomic import atomic_write_bytes
from minicnn.data.errors import DatasetError

__all__ = ["MAX_IDX_BYTES", "read_idx", "write_idx", "idx_payload", "payload_sha256",
           "decompress", "parse_idx", "GZIP_MAGIC"]

MAX_IDX_BYTES = 1 << 30
"""Largest IDX payload accepted, decompressed (MNIST's biggest is 47 MB)."""


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}


GZIP_MAGIC = b"\x1f\x8b"


def _declared_size(head: bytes) -> int | None:
    """Bytes an IDX payload must have, from the start of it (None if the header is incomplete
    or not IDX); Python ints, so no dimensions overflow."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return 4 + 4 * ndim + math.prod(dims) * _IDX_DTYPES[head[2]].itemsize


def decompress(raw: bytes, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Gunzip ``raw`` if it starts with the gzip magic bytes (else return it unchanged),
    inflating no more than its IDX header declares and never more than ``max_bytes``."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        head = inflater.decompress(raw, 4 + 4 * 255)      # the longest IDX header
        limit = min(_declared_size(head) or max_bytes, max_bytes)
        rest = inflater.decompress(inflater.unconsumed_tail, max(limit - len(head), 0) + 1)
    except zlib.error as exc:
        raise DatasetError(f"bad gzip data ({exc})") from None
    data = head + rest
    if len(data) > limit:
        raise DatasetError(f"gzip data inflates past {limit:,} bytes, the most its header "
                           f"allows (and at most {max_bytes:,})")
    if not inflater.eof:
        raise DatasetError("bad gzip data (truncated stream)")
    if inflater.unused_data:
        raise DatasetError(f"bad gzip data ({len(inflater.unused_data)} bytes after the stream)")
    return data


def parse_idx(data: bytes, sha256: str | None = None) -> np.ndarray:
    """Check and decode an IDX payload; errors carry no file name (callers add it)."""
    if len(data) < 4 or data[:2] != b"\0\0":
        magic = data[:4].hex(" ") or "nothing"
        raise DatasetError(
            f"not an IDX file: expected magic bytes 00 00 <type> <ndim>, found {magic}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise DatasetError(f"unsupported IDX type code 0x{code:02x} (expected one of {known})")
    if ndim == 0:
        raise DatasetError("IDX header declares 0 dimensions, expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"truncated header: expected {header} bytes for {ndim} dimensions, found {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize         # Python ints: no overflow
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else f"{found - expected} trailing bytes"
        raise DatasetError(f"{what}: expected {expected} data bytes for shape {shape} "
                           f"{dtype.newbyteorder('=').name}, found {found}")
    # Checked after the structure: "not an IDX file" says more than a digest mismatch.
    if sha256 is not None and (digest := hashlib.sha256(data).hexdigest()) != sha256:
        raise DatasetError(f"SHA-256 of the decompressed payload is {digest}, expected {sha256}")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def idx_payload(path: str | os.PathLike) -> bytes:
    """Return the file's decompressed IDX bytes (header included); gzip is detected by its
    magic bytes."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES:,} bytes, the most an "
                                   "IDX file may have here")
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return decompress(raw)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def payload_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of the file's decompressed IDX payload (what the tables list)."""
    return hashlib.sha256(idx_payload(path)).hexdigest()


def read_idx(path: str | os.PathLike, *, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its shape, native byte order.

    Types 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. The
    magic number, the header and the exact payload length are checked; if ``sha256`` is given
    the decompressed payload must have that digest. Any problem raises ``DatasetError``.
    """
    data = idx_payload(path)
    try:
        return parse_idx(data, sha256)
    except DatasetError as exc:
        hint = " (it is not gzip-compressed either)" if str(path).endswith(".gz") \
            and data[:2] != b"\0\0" else ""
        raise DatasetError(f"{path}: {exc}{hint}") from None


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` (uint8/int8/int16/int32/float32/float64, >= 1-D) as an IDX file.

    ``compress`` defaults to whether the name ends in ``.gz``. The file is written to a
    temporary file in the same folder and renamed into place, so it is never half-written.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise DatasetError(f"{path}: cannot write dtype {array.dtype} with {array.ndim} "
                           f"dimensions as IDX (supported: {', '.join(map(str, _IDX_CODES))})")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + np.ascontiguousarray(array, _IDX_DTYPES[code]).tobytes()
    if compress if compress is not None else path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
