"""What the command line's commands share: its error type, argument types, one-line messages,
data sets, checkpoint paths and file names (``minicnn.cli`` builds the parser; the commands
live there and in ``minicnn.cli.train``)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import minicnn
from minicnn.data.cifar10 import CIFAR10_CLASSES, load_cifar10
from minicnn.data.datasets import load_fashion_mnist, load_mnist
from minicnn.data.folder import load_folder_splits
from minicnn.saving.checkpoint import RUN_MODEL, checkpoint_file
from minicnn.viz import plots

LAST, FINAL, BEST, METRICS = "last.npz", RUN_MODEL, "best.npz", "metrics.jsonl"
CURVES, CONFUSION, EVAL_CONFUSION = "curves.png", "confusion.png", "evaluate_confusion.png"

DATASETS = {
    "mnist": (load_mnist, [str(d) for d in range(10)]),
    "fashion-mnist": (load_fashion_mnist, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "cifar10": (load_cifar10, CIFAR10_CLASSES),
}
FOLDER = "folder:"
"""``--dataset folder:PATH``: an image folder, one subfolder per class (minicnn.data.folder)."""
FOLDER_SHAPE = (3, 32, 32)
"""The (channels, height, width) folder images are read as unless --channels/--image-size say."""


def dataset_name(text: str) -> str:
    """--dataset: a known data set, or folder:PATH."""
    if text in DATASETS or (text.startswith(FOLDER) and len(text) > len(FOLDER)):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DATASETS)} or folder:PATH, "
                                     f"got {text!r}")


# Commands that run training or inference steps, for which the CLI tunes the C allocator.
class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite(text: str, low: float, strict: bool) -> float:
    """``text`` as a finite float above ``low`` (or at least ``low``), else a usage error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and (value > low if strict else value >= low)):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _finite(text, 0.0, strict=True)


def non_negative_float(text: str) -> float:
    return _finite(text, 0.0, strict=False)


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def label_smoothing(text: str) -> float:
    """--label-smoothing: a finite number in [0, 1)."""
    value = _finite(text, 0.0, strict=False)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def augmentation_spec(text: str) -> int | str:
    """--augment: an int K (random shifts of up to K pixels) or a spec such as 'crop=2,flip'
    (``minicnn.data.augment.parse_augmentation``), checked here."""
    from minicnn.data.augment import parse_augmentation
    value: int | str = int(text) if text.strip().isdigit() else text.strip()
    try:
        parse_augmentation(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def checkpoint_path(arg: str) -> Path:
    """A checkpoint file, or a run folder's model.npz (as ``minicnn.load`` reads them)."""
    return checkpoint_file(arg)


def say(message: str) -> None:
    print(message, file=sys.stderr)


def set_backend(name: str | None) -> None:
    if name is not None:
        minicnn.set_backend(name)


def load_dataset(name: str, root: str | None, shape: Any = FOLDER_SHAPE):
    """((x_train, y_train), (x_test, y_test)) as NumPy arrays; a given root must exist. A
    folder data set is read at ``shape`` (channels, height, width)."""
    if name.startswith(FOLDER):
        (x, y), (xt, yt), _ = load_folder_splits(name[len(FOLDER):], tuple(shape[1:]),
                                                 int(shape[0]))
        return (x, y), (xt, yt)
    if root is not None and not Path(root).is_dir():
        raise CLIError(f"--data-root {root}: no such folder")
    loader, _ = DATASETS[name]
    return loader(root)


def dataset_classes(name: str) -> list[str]:
    """The class names of a data set (a folder's: its class subfolders, sorted)."""
    if not name.startswith(FOLDER):
        return list(DATASETS[name][1])
    folder = Path(name[len(FOLDER):])
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        folder = folder / "train"
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def can_plot() -> bool:
    """True if matplotlib can draw; otherwise says so (once per command) and returns False."""
    if plots.available():
        return True
    say("note: matplotlib is not installed, so no curves.png / confusion.png "
         "(pip install matplotlib)")
    return False


def test_set(meta: dict[str, Any], args: argparse.Namespace):
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise CLIError("the checkpoint does not say which dataset it was trained on; pass "
                       "--dataset")
    if dataset not in DATASETS and not str(dataset).startswith(FOLDER):
        raise CLIError(f"unknown dataset {dataset!r} in the checkpoint; pass --dataset")
    _, (xt, yt) = load_dataset(dataset, args.data_root, meta.get("image_shape", FOLDER_SHAPE))
    return dataset, xt, yt


def class_names(meta: dict[str, Any], k: int, dataset: str | None = None) -> list[str]:
    """Names for k classes: the dataset's, else the checkpoint's, else 0..k-1."""
    saved = meta.get("dataset")                  # any JSON value: a name only if a string
    known = DATASETS[saved][1] if isinstance(saved, str) and saved in DATASETS else None
    names = DATASETS[dataset][1] if dataset in DATASETS else meta.get("classes") or known
    return list(names) if isinstance(names, list) and len(names) == k else \
        [str(i) for i in range(k)]
