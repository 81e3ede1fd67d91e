"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every file minicnn writes (checkpoints, data set files, metrics, plots) goes through
``atomic_write``: the content is written to a temporary file in the target's folder
(``.<name>.<random>.tmp``), flushed and fsynced, given normal permissions, renamed over the
target with ``os.replace`` (atomic on POSIX and Windows), and then the folder itself is
fsynced so the rename survives a power cut. If writing fails, or is interrupted (Ctrl-C),
the temporary file is removed and the target is left as it was. A process killed outright
(kill -9) cannot clean up: the next write of the same target removes such leftovers (one
writer per target is assumed).

This module imports nothing from minicnn, so any module may use it.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "remove_leftovers"]

_RANDOM_PART = re.compile(r"[a-z0-9_]{8}")     # what tempfile.mkstemp puts in the name


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an earlier, killed write of ``path`` left beside it
    (``.<name>.<random>.tmp``); returns what was removed."""
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    for name in glob.glob(glob.escape(str(path.parent / prefix)) + "*.tmp"):
        middle = Path(name).name[len(prefix):-len(".tmp")]
        if _RANDOM_PART.fullmatch(middle):
            try:
                os.unlink(name)
                removed.append(Path(name))
            except FileNotFoundError:
                pass
    return removed


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders can't be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                 # Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:                 # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 mode: int = 0o644) -> Path:
    """Create or replace the file ``path`` with what ``write(f)`` writes into the binary file
    ``f``, atomically and durably; the file gets permissions ``mode``. Returns the path.

    Any exception from ``write`` (or from the file system) is re-raised after the temporary
    file is removed; the target is then untouched.
    """
    path = Path(path)
    folder = path.parent
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)         # mkstemp creates the file private (0600)
        os.replace(tmp, path)
        remove_leftovers(path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Create or replace the file ``path`` with ``data``, atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(data), mode)
