"""Downloads within budgets: https only (plain http to this machine alone), a size cap checked
against Content-Length and then counted, a deadline per file, and nothing written before the
payload is verified (then a temp file and a rename).
"""
from __future__ import annotations

import ipaddress
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from minicnn.core.atomic import atomic_write_bytes
from minicnn.data.errors import DatasetError
from minicnn.data.idx import GZIP_MAGIC, decompress, parse_idx

__all__ = ["DOWNLOAD_TIMEOUT", "DOWNLOAD_DEADLINE", "MAX_DOWNLOAD_BYTES", "fetch", "download_bytes",
           "check_scheme", "describe_error"]

DOWNLOAD_TIMEOUT = 30.0  # seconds per network operation (connect or read)


DOWNLOAD_DEADLINE = 120.0
"""Seconds one file's download may take in all (checked between reads)."""


MAX_DOWNLOAD_BYTES = 64 << 20
"""Largest response accepted (the biggest MNIST archive is under 10 MB)."""


def download_bytes(url: str, label: str, max_bytes: int | None = None,
                   deadline_s: float | None = None) -> bytes:
    """The body at ``url``, held in memory: at most ``max_bytes`` (checked against
    Content-Length, then counted; default ``MAX_DOWNLOAD_BYTES``), within ``deadline_s``
    seconds (default ``DOWNLOAD_DEADLINE``); DatasetError otherwise."""
    max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes      # read at call time
    deadline_s = DOWNLOAD_DEADLINE if deadline_s is None else deadline_s
    check_scheme(url)
    request = urllib.request.Request(url, headers={"User-Agent": "minicnn"})
    chunks: list[bytes] = []
    received, deadline = 0, time.monotonic() + deadline_s
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DatasetError(f"the server announces {total:,} bytes, more than the "
                               f"{max_bytes:,} allowed")
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=label) as bar:
            while chunk := response.read(1 << 16):
                received += len(chunk)
                if received > max_bytes:
                    raise DatasetError(f"more than {max_bytes:,} bytes; stopped")
                if time.monotonic() > deadline:
                    raise DatasetError(f"not done after {deadline_s:.0f} s "
                                       f"({received:,} bytes); stopped")
                chunks.append(chunk)
                bar.update(len(chunk))
    raw = b"".join(chunks)
    # http.client's read(n) returns b"" at a premature close instead of raising.
    if total is not None and len(raw) != total:
        raise DatasetError(f"connection closed after {len(raw)} of {total} bytes")
    return raw


def fetch(url: str, folder: Path, stem: str, sha256: str) -> Path:
    """Download one archive, verify its payload, then write it into ``folder`` atomically.

    The body is held in memory (26 MB at most) until verified, so a failed or corrupt
    download never touches the folder; the verified bytes go through a temp file + rename.
    """
    raw = download_bytes(url, f"{stem}.gz")
    parse_idx(decompress(raw), sha256)
    target = folder / (f"{stem}.gz" if raw[:2] == GZIP_MAGIC else stem)
    atomic_write_bytes(target, raw)
    return target


def check_scheme(url: str) -> None:
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


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, DatasetError) else str(exc)
