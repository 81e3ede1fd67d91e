"""An image-folder data set: one subfolder per class, any image size, read with Pillow.

    photos/                      load_image_folder("photos", size=(32, 32), channels=3)
        cat/  a.jpg b.png ...    -> x uint8 (N, 3, 32, 32), y int64 (N,), ["cat", "dog"]
        dog/  c.jpg ...

Classes are the subfolders' names in sorted order (label k = the k-th name); files are taken
in sorted order within each. Every image is read with Pillow (``pip install -e ".[image]"``),
converted to grey (1 channel) or RGB (3), and resized to ``size`` with a box filter (each
output pixel the mean of the area it covers). Budgets: at most ``max_images`` files, each
within ``minicnn.data.images``' file-size and pixel limits (checked from the header before
decoding). A folder with ``train/`` and ``test/`` subfolders gives both splits
(``load_folder_splits``); otherwise a seeded tenth is held out as the test split. Every problem
is one ``DatasetError`` naming the file or folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from minicnn.data.errors import DatasetError
from minicnn.data.images import MAX_IMAGE_BYTES, _check_size, resize

__all__ = ["load_image_folder", "load_folder_splits", "IMAGE_SUFFIXES", "MAX_FOLDER_IMAGES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff",
                  ".webp")
MAX_FOLDER_IMAGES = 1_000_000
"""Most image files one folder data set may hold (a typo'd path to / is refused quickly)."""


def _read(path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (channels, H, W) at ``size``."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f'{path}: reading image folders needs Pillow (pip install -e '
                           '".[image]")') from None
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_IMAGE_BYTES:,} bytes, the most an image "
                           "file may have here")
    try:
        with Image.open(path) as image:
            _check_size(*image.size)
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not an image file Pillow can read ({exc})") from None
    planes = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return np.stack([resize(p, size) for p in planes])


def load_image_folder(folder: str | os.PathLike, size: tuple[int, int] = (28, 28),
                      channels: int = 1, max_images: int = MAX_FOLDER_IMAGES
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 (N, channels, *size), labels int64 (N,) and the class names of a folder
    with one subfolder per class."""
    folder = Path(folder)
    if channels not in (1, 3):
        raise ValueError(f"load_image_folder: channels must be 1 or 3, got {channels!r}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (expected one subfolder per class)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and
                     not d.name.startswith("."))
    if len(classes) < 2:
        raise DatasetError(f"{folder}: expected at least 2 class subfolders, found "
                           f"{len(classes)}")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append((path, label))
                if len(files) > max_images:
                    raise DatasetError(f"{folder}: more than {max_images:,} image files")
    empty = [n for k, n in enumerate(classes) if not any(lab == k for _, lab in files)]
    if empty:
        raise DatasetError(f"{folder}: no image files in {', '.join(empty)}")
    x = np.empty((len(files), channels, *size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        x[i] = _read(path, channels, size)
    return x, np.array([lab for _, lab in files], dtype=np.int64), classes


def load_folder_splits(folder: str | os.PathLike, size: tuple[int, int] = (28, 28),
                       channels: int = 1, seed: int = 0
                       ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                  list[str]]:
    """((x_train, y_train), (x_test, y_test), classes): from ``train/`` and ``test/`` when
    the folder has both (their classes must match), else a seeded tenth held out."""
    folder = Path(folder)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        x, y, classes = load_image_folder(folder / "train", size, channels)
        xt, yt, test_classes = load_image_folder(folder / "test", size, channels)
        if test_classes != classes:
            raise DatasetError(f"{folder}: train/ has classes {classes} but test/ has "
                               f"{test_classes}")
        return (x, y), (xt, yt), classes
    x, y, classes = load_image_folder(folder, size, channels)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(1, len(x) // 10)
    test, train = order[:cut], order[cut:]
    return (x[train], y[train]), (x[test], y[test]), classes
