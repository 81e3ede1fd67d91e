"""Training curves and confusion matrices as PNG files, when matplotlib is installed.

matplotlib is optional: ``available()`` says whether it can be imported, and the plotting
functions raise ``PlotUnavailable`` otherwise. Figures are drawn with the Agg canvas directly
(no ``pyplot``), so nothing global changes and no display is needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy

from minicnn.atomic import atomic_write

__all__ = ["PlotUnavailable", "available", "plot_curves", "plot_confusion"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def available() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401  (only whether it imports)
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed (pip install matplotlib)") from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> Path:
    """Lay out ``figure`` and write it to ``path`` atomically, in the format its suffix names
    (``.pdf``, ``.svg``...), PNG for any other suffix."""
    path = Path(path)
    figure.tight_layout()
    image_format = path.suffix[1:].lower()
    if image_format not in figure.canvas.get_supported_filetypes():
        image_format = "png"
    return atomic_write(path, lambda f: figure.savefig(f, format=image_format))


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and validation, from History records
    (dicts with epoch, train_loss, train_acc, val_loss, val_acc), saved as a PNG at ``path``."""
    figure = _figure(10, 4)
    epochs = [r["epoch"] for r in records]
    for column, (metric, title) in enumerate((("loss", "Loss"), ("acc", "Accuracy"))):
        ax = figure.add_subplot(1, 2, column + 1)
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [r.get(f"{split}_{metric}") for r in records]
            if any(v is not None for v in values):
                points = [(e, v) for e, v in zip(epochs, values) if v is not None]
                label = "train" if split == "train" else "test"
                ax.plot(*zip(*points), style, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(epochs) < 15:
            ax.set_xticks(epochs)
        ax.legend()
    return _save(figure, path)


def plot_confusion(matrix: Any, path: str | os.PathLike,
                   class_names: Sequence[str] | None = None, title: str = "Confusion matrix",
                   ) -> Path:
    """A (K, K) confusion matrix (rows: true class, columns: predicted) as an annotated heat
    map, saved as a PNG at ``path``."""
    matrix = numpy.asarray(matrix)
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    figure = _figure(max(6.0, 0.6 * k + 2), max(5.0, 0.55 * k + 1.5))
    ax = figure.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(figure, path)
