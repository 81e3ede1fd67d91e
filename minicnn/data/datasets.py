"""MNIST and Fashion-MNIST on the host: where their files are, which checksums they must have,
and mirrored downloads of the missing ones (the format is ``idx``, the network ``download``).

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

import http.client
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minicnn.data.download import describe_error, fetch
from minicnn.data.errors import DatasetError
from minicnn.data.idx import idx_payload, payload_sha256, read_idx, write_idx

__all__ = ["data_root", "dataset_files", "load_mnist", "load_fashion_mnist", "FILE_NAMES",
           # kept here for code written for 0.1 (minicnn.datasets)
           "DatasetError", "read_idx", "write_idx", "idx_payload", "payload_sha256"]


# IDX type code -> big-endian dtype, as in the format's specification.


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
        "train-images-idx3-ubyte":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }, ("https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    "fashion-mnist": _Spec("Fashion-MNIST", "fashion-mnist", {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
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
                    found[stem] = fetch(url, folder, stem, spec.sha256[stem])
                    break
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    failures.append(f"  {url}: {describe_error(exc)}")
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
        raise DatasetError(f"{ipath}: expected {count} images in the {split} set, "
                           f"found {len(images)}")
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
