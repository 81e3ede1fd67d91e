"""CIFAR-10, binary version: 60,000 32x32 colour images in 10 classes (Krizhevsky, 2009).

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/`` with five training
files ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``. Each is 10,000
records of 3,073 bytes: one label byte (0-9), then 1,024 red, 1,024 green and 1,024 blue bytes,
each plane row-major. So a record is one (3, 32, 32) uint8 image, NCHW as minicnn reads it.

Files are looked for in ``data_root(root)/cifar10/`` (the files themselves, or the archive's
``cifar-10-batches-bin/`` folder in it). Missing ones are downloaded (if ``download``) as the
archive from ``mirrors`` / ``$MINICNN_CIFAR10_MIRRORS`` / the built-in list: at most
``MAX_ARCHIVE_BYTES``, its MD5 checked against the published one, then only the six expected
members extracted, each checked for its exact size before it is read, and written atomically.
Every problem is one ``DatasetError`` naming the file.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minicnn.core.atomic import atomic_write_bytes
from minicnn.data.datasets import data_root
from minicnn.data.download import describe_error, download_bytes
from minicnn.data.errors import DatasetError

__all__ = ["load_cifar10", "read_cifar_batch", "write_cifar_batch", "CIFAR10_CLASSES",
           "TRAIN_FILES", "TEST_FILE"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
TRAIN_FILES = tuple(f"data_batch_{k}.bin" for k in range(1, 6))
TEST_FILE = "test_batch.bin"
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
RECORDS_PER_FILE = 10_000
"""Records in each of the six files of the official data set."""
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
"""The archive's MD5, as published with it (and checked by torchvision)."""
MAX_ARCHIVE_BYTES = 200 << 20
"""Largest archive accepted (the real one is 162 MiB)."""
ARCHIVE_DEADLINE = 900.0
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


def read_cifar_batch(path: str | os.PathLike, records: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, 3, 32, 32) and labels int64 (n,) of one binary batch file of
    ``records`` records (default ``RECORDS_PER_FILE``); its size is checked before reading."""
    path = Path(path)
    records = RECORDS_PER_FILE if records is None else records
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size != records * RECORD_BYTES:
        raise DatasetError(f"{path}: expected {records} records of {RECORD_BYTES} bytes "
                           f"({records * RECORD_BYTES:,} bytes), found {size:,} bytes")
    data = np.fromfile(path, dtype=np.uint8).reshape(records, RECORD_BYTES)
    labels = data[:, 0].astype(np.int64)
    if labels.max(initial=0) > 9:
        bad = int(np.argmax(labels > 9))
        raise DatasetError(f"{path}: record {bad} has label {int(labels[bad])}, expected 0-9")
    return np.ascontiguousarray(data[:, 1:].reshape(records, 3, 32, 32)), labels


def write_cifar_batch(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images uint8 (n, 3, 32, 32) and labels (n,) in the binary format (atomically)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32) or \
            labels.shape != (len(images),):
        raise ValueError(f"write_cifar_batch: expected uint8 images (n, 3, 32, 32) and labels "
                         f"(n,), got {images.dtype} {images.shape} and {labels.shape}")
    records = np.empty((len(images), RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), -1)
    atomic_write_bytes(path, records.tobytes())


def _find(folder: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        found[name] = next((p for p in (folder / name, folder / "cifar-10-batches-bin" / name)
                            if p.is_file()), None)
    return found


def _extract(raw: bytes, folder: Path, records: int) -> None:
    """Write the six batch files of archive ``raw`` into ``folder``: regular members named
    ``*/NAME`` only, each of the exact size, nothing else read."""
    wanted = {*TRAIN_FILES, TEST_FILE}
    size = records * RECORD_BYTES
    got: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
            for member in archive:
                name = member.name.rsplit("/", 1)[-1]
                if name not in wanted or not member.isfile():
                    continue
                if member.size != size:
                    raise DatasetError(f"{ARCHIVE}: {member.name} is {member.size:,} bytes, "
                                       f"expected {size:,}")
                handle = archive.extractfile(member)
                if handle is None:
                    raise DatasetError(f"{ARCHIVE}: cannot read {member.name}")
                got[name] = handle.read(size + 1)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetError(f"{ARCHIVE}: not a readable tar.gz archive ({exc})") from None
    missing = sorted(wanted - set(got))
    if missing:
        raise DatasetError(f"{ARCHIVE}: lacks {', '.join(missing)}")
    for name, data in got.items():
        atomic_write_bytes(folder / name, data)


def _mirrors(mirrors: Sequence[str] | None) -> list[str]:
    if mirrors is not None:
        return list(mirrors)
    env = [m.strip() for m in os.environ.get("MINICNN_CIFAR10_MIRRORS", "").split(",")
           if m.strip()]
    return env or list(MIRRORS)


def cifar10_files(root: str | os.PathLike | None = None, download: bool = True,
                  mirrors: Sequence[str] | None = None) -> dict[str, Path]:
    """{file name: path} of the six batch files, found or downloaded (see the module)."""
    folder = data_root(root) / "cifar10"
    found = _find(folder)
    if all(found.values()):
        return found  # type: ignore[return-value]
    failures = []
    if download:
        for base in _mirrors(mirrors):
            url = f"{base.rstrip('/')}/{ARCHIVE}"
            try:
                raw = download_bytes(url, ARCHIVE, MAX_ARCHIVE_BYTES, ARCHIVE_DEADLINE)
                digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
                if digest != ARCHIVE_MD5:
                    raise DatasetError(f"MD5 {digest} differs from the published {ARCHIVE_MD5}")
                folder.mkdir(parents=True, exist_ok=True)
                _extract(raw, folder, RECORDS_PER_FILE)
                return _find(folder)  # type: ignore[return-value]
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failures.append(f"{url}: {describe_error(exc)}")
    missing = [name for name, p in found.items() if p is None]
    why = ("download=False" if not download else
           "download failed: " + "; ".join(failures) if failures else "no mirrors configured")
    raise DatasetError(f"CIFAR-10 files not found in {folder} (missing {', '.join(missing)}); "
                       f"put the binary version's files there or point MINICNN_DATA at a folder "
                       f"holding cifar10/ ({why})")


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True, *,
                 mirrors: Sequence[str] | None = None
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 as ``((x_train, y_train), (x_test, y_test))``: uint8 images (50000, 3, 32, 32)
    and (10000, 3, 32, 32), int64 labels 0-9 (``CIFAR10_CLASSES`` names them)."""
    files = cifar10_files(root, download, mirrors)
    parts = [read_cifar_batch(files[name]) for name in TRAIN_FILES]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return (x, y), read_cifar_batch(files[TEST_FILE])
