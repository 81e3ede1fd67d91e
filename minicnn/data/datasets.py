"""MNIST and Fashion-MNIST on the host: IDX files, payload checksums, mirrored downloads.

Everything here returns NumPy arrays; the training code moves batches to the active
backend. Files are looked for under a data root (``data_root``: the ``root`` argument, else the
``MINICNN_DATA`` environment variable, else a source checkout's ``datasets/`` folder, else
``~/.cache/minicnn``), in
``<root>/mnist/`` and ``<root>/fashion-mnist/``. Missing files can be downloaded from public
mirrors (``MINICNN_MIRRORS``, comma-separated base URLs, replaces the built-in list).

Checksums are SHA-256 digests of the *decompressed* IDX payload, not of the ``.gz`` bytes:
a recompressed archive has different bytes but the same payload.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import ipaddress
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from minicnn.core.atomic import atomic_write_bytes

__all__ = [
    "DatasetError", "read_idx", "write_idx", "idx_payload", "payload_sha256", "data_root",
    "dataset_files", "load_mnist", "load_fashion_mnist", "FILE_NAMES",
]

DOWNLOAD_TIMEOUT = 30.0  # seconds per network operation (connect or read)
DOWNLOAD_DEADLINE = 120.0
"""Seconds one file's download may take in all (checked between reads)."""
MAX_DOWNLOAD_BYTES = 64 << 20
"""Largest response accepted (the biggest MNIST archive is under 10 MB)."""
MAX_IDX_BYTES = 1 << 30
"""Largest IDX payload accepted, decompressed (MNIST's biggest is 47 MB)."""


class DatasetError(ValueError):
    """A data file is missing, malformed, or fails its checksum; the message names the file."""


# IDX type code -> big-endian dtype, as in the format's specification.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


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


def _decompress(raw: bytes, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Gunzip ``raw`` if it starts with the gzip magic bytes (else return it unchanged),
    inflating no more than its IDX header declares and never more than ``max_bytes``."""
    if raw[:2] != _GZIP_MAGIC:
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


def _parse_idx(data: bytes, sha256: str | None = None) -> np.ndarray:
    """Check and decode an IDX payload; errors carry no file name (callers add it)."""
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DatasetError(
            f"not an IDX file: expected magic bytes 00 00 <type> <ndim>, found {data[:4].hex(' ') or 'nothing'}")
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
    """Return the file's decompressed IDX bytes (header included); gzip is detected by magic bytes."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES:,} bytes, the most an "
                                   "IDX file may have here")
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _decompress(raw)
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
        return _parse_idx(data, sha256)
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


# --------------------------------------------------------------------------- datasets

FILE_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Spec:
    title: str
    subdir: str
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()


_SPECS = {
    "mnist": _Spec("MNIST", "mnist", {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }, ("https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    "fashion-mnist": _Spec("Fashion-MNIST", "fashion-mnist", {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    }, ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        # Debian's dataset-fashion-mnist package installs the four .gz files here.
        ("/usr/share/datasets/fashion-mnist",)),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root``; else ``$MINICNN_DATA``; else, in a source checkout, its
    ``datasets/`` folder; else the user's cache, ``$XDG_CACHE_HOME/minicnn`` (by default
    ``~/.cache/minicnn``). Never a folder inside an installed package."""
    chosen = root if root is not None else os.environ.get("MINICNN_DATA")
    if not chosen:
        checkout = Path(__file__).resolve().parents[2]
        if (checkout / "pyproject.toml").is_file() and (checkout / ".git").exists() and \
                "site-packages" not in checkout.parts:
            chosen = checkout / "datasets"
        else:
            cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
            chosen = Path(cache) / "minicnn"
    return Path(os.path.abspath(Path(chosen).expanduser()))


def _find(folder: Path) -> dict[str, Path | None]:
    """Map each stem to ``folder/stem.gz`` or ``folder/stem``, whichever exists, else None."""
    found: dict[str, Path | None] = {}
    for stem in FILE_NAMES:
        found[stem] = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
    return found


def _mirror_list(mirrors: Sequence[str] | None, spec: _Spec) -> list[str]:
    if mirrors is not None:
        return list(mirrors)
    env = [m.strip() for m in os.environ.get("MINICNN_MIRRORS", "").split(",") if m.strip()]
    return env or list(spec.mirrors)


def _fetch(url: str, folder: Path, stem: str, sha256: str) -> Path:
    """Download one archive, verify its payload, then write it into ``folder`` atomically.

    The body is held in memory (26 MB at most) until verified, so a failed or corrupt
    download never touches the folder; the verified bytes go through a temp file + rename.
    """
    _check_scheme(url)
    request = urllib.request.Request(url, headers={"User-Agent": "minicnn"})
    chunks: list[bytes] = []
    received, deadline = 0, time.monotonic() + DOWNLOAD_DEADLINE
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise DatasetError(f"the server announces {total:,} bytes, more than the "
                               f"{MAX_DOWNLOAD_BYTES:,} allowed")
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"{stem}.gz") as bar:
            while chunk := response.read(1 << 16):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise DatasetError(f"more than {MAX_DOWNLOAD_BYTES:,} bytes; stopped")
                if time.monotonic() > deadline:
                    raise DatasetError(f"not done after {DOWNLOAD_DEADLINE:.0f} s "
                                       f"({received:,} bytes); stopped")
                chunks.append(chunk)
                bar.update(len(chunk))
    raw = b"".join(chunks)
    # http.client's read(n) returns b"" at a premature close instead of raising.
    if total is not None and len(raw) != total:
        raise DatasetError(f"connection closed after {len(raw)} of {total} bytes")
    _parse_idx(_decompress(raw), sha256)
    target = folder / (f"{stem}.gz" if raw[:2] == _GZIP_MAGIC else stem)
    atomic_write_bytes(target, raw)
    return target


def _check_scheme(url: str) -> None:
    """Downloads use https; plain http only to this machine (a local mirror or a test
    server) or with ``MINICNN_ALLOW_HTTP=1``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback or os.environ.get("MINICNN_ALLOW_HTTP") == "1":
            return
    raise DatasetError(f"refusing {parts.scheme or 'a schemeless'} URL: downloads need https "
                       "(plain http only to localhost, or with MINICNN_ALLOW_HTTP=1)")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, DatasetError) else str(exc)


def dataset_files(name: str, root: str | os.PathLike | None = None, download: bool = True, *,
                  mirrors: Sequence[str] | None = None) -> dict[str, Path]:
    """Return ``{stem: path}`` for the four IDX files of ``name`` ("mnist" or "fashion-mnist").

    A folder is used only if it holds all four files (``.gz`` or un-gzipped): first
    ``data_root(root)/<name>``, then system folders (Debian's for Fashion-MNIST). Otherwise the
    missing files are downloaded into ``data_root(root)/<name>`` (if ``download``) from
    ``mirrors``, else ``$MINICNN_MIRRORS``, else the built-in list, trying each mirror in turn.
    A download is kept only if its decompressed payload has the SHA-256 in the table; nothing
    half-written is left behind. Raises ``DatasetError`` listing what is missing and why.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_SPECS)}")
    spec = _SPECS[name]
    folder = data_root(root) / spec.subdir
    for candidate in (folder, *map(Path, spec.system_dirs)):
        found = _find(candidate)
        if all(found.values()):
            return found  # type: ignore[return-value]
    found = _find(folder)
    failures: list[str] = []
    if download:
        made = [d for d in (folder, *folder.parents) if not d.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"{folder}: cannot create the data folder "
                               f"({exc.strerror or exc}); point MINICNN_DATA or root= at a "
                               "writable folder") from None
        for stem in (s for s, p in found.items() if p is None):
            for base in _mirror_list(mirrors, spec):
                url = f"{base.rstrip('/')}/{stem}.gz"
                try:
                    found[stem] = _fetch(url, folder, stem, spec.sha256[stem])
                    break
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    failures.append(f"  {url}: {_describe(exc)}")
            if found[stem] is None:
                break
        if all(found.values()):
            return found  # type: ignore[return-value]
        for d in made:  # leave no empty folders behind either (innermost first)
            if any(d.iterdir()):
                break
            d.rmdir()
    lines = [f"{spec.title} files not found in {folder}:"]
    lines += [f"  {stem}.gz  ({'present' if p else 'missing'})" for stem, p in found.items()]
    lines.append(f"Put the four files there (gzipped, or un-gzipped without .gz), or point `root=` "
                 f"or the MINICNN_DATA environment variable at a folder holding {spec.subdir}/.")
    if spec.system_dirs:
        lines.append(f"Also looked in {', '.join(spec.system_dirs)} "
                     f"(Debian: apt-get install dataset-{spec.subdir}).")
    if not download:
        lines.append("download=False, so nothing was downloaded.")
    elif failures:
        lines.append("Download failed on every mirror:")
        lines += failures
    else:
        lines.append("No download mirrors configured (MINICNN_MIRRORS / mirrors=).")
    raise DatasetError("\n".join(lines))


def _load_split(paths: dict[str, Path], split: str, count: int, spec: _Spec,
                verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read one split's images and labels and check shapes, dtypes, counts and label range."""
    ipath, lpath = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
    images = read_idx(ipath, sha256=spec.sha256[f"{split}-images-idx3-ubyte"] if verify else None)
    labels = read_idx(lpath, sha256=spec.sha256[f"{split}-labels-idx1-ubyte"] if verify else None)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{ipath}: expected uint8 images of shape (N, 28, 28), "
                           f"found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(f"{lpath}: expected uint8 labels of shape (N,), "
                           f"found {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{ipath} holds {len(images)} images but {lpath} holds "
                           f"{len(labels)} labels; expected equal counts")
    if len(images) != count:
        raise DatasetError(f"{ipath}: expected {count} images in the {split} set, found {len(images)}")
    if labels.max(initial=0) > 9:
        raise DatasetError(f"{lpath}: expected labels 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def _load(name: str, root, download: bool, mirrors, verify: bool):
    spec = _SPECS[name]
    paths = dataset_files(name, root, download, mirrors=mirrors)
    return (_load_split(paths, "train", 60000, spec, verify),
            _load_split(paths, "t10k", 10000, spec, verify))


def load_mnist(root: str | os.PathLike | None = None, download: bool = True, *,
               mirrors: Sequence[str] | None = None, verify: bool = True,
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return MNIST as ``((x_train, y_train), (x_test, y_test))``.

    Images are uint8 of shape (60000, 28, 28) and (10000, 28, 28); labels int64 of shape (N,)
    with values 0..9. Files are found or downloaded as in ``dataset_files``. Every load checks
    the IDX structure, shapes, dtypes and counts; with ``verify`` (default) it also checks the
    SHA-256 of each decompressed payload against the table (about 25 ms for the 55 MB, small
    next to gunzip), which catches a corrupt raw file or Fashion-MNIST put in ``mnist/``.
    Downloads are always verified.
    """
    return _load("mnist", root, download, mirrors, verify)


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True, *,
                       mirrors: Sequence[str] | None = None, verify: bool = True,
                       ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``, shapes as ``load_mnist``.

    Looked for in ``data_root(root)/fashion-mnist/``, then in Debian's
    ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``), then downloaded.
    """
    return _load("fashion-mnist", root, download, mirrors, verify)
