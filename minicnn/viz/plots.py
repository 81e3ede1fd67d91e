"""Training curves and confusion matrices as PNG files, when matplotlib is installed.

matplotlib is optional: ``available()`` says whether it can be imported, and the plotting
functions raise ``PlotUnavailable`` otherwise. Figures are drawn with the Agg canvas directly
(no ``pyplot``), so nothing global changes and no display is needed.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy

from minicnn.core.atomic import atomic_write

__all__ = ["PlotUnavailable", "available", "plot_curves", "plot_confusion", "confusion_figure"]


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
                label = "train" if split == "train" else "validation"
                ax.plot(*zip(*points), style, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(epochs) < 15:
            ax.set_xticks(epochs)
        ax.legend()
    return _save(figure, path)


def confusion_figure(matrix: Any, class_names: Sequence[str] | None = None,
                     title: str = "Confusion matrix") -> Any:
    """A (K, K) confusion matrix (rows: true class, columns: predicted) as an annotated heat
    map on a logarithmic colour scale, so a cell of 3 errors shows beside one of 1,000 correct
    answers; empty cells stay white. Returns the matplotlib Figure."""
    figure = _figure(1, 1)                            # raises PlotUnavailable first
    from matplotlib.colors import LogNorm
    matrix = numpy.asarray(matrix)
    k = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    figure.set_size_inches(max(6.0, 0.6 * k + 2), max(5.0, 0.55 * k + 1.5))
    ax = figure.add_subplot(1, 1, 1)
    top = max(int(matrix.max()) if matrix.size else 1, 2)
    image = ax.imshow(numpy.ma.masked_equal(matrix, 0), cmap="Blues",
                      norm=LogNorm(vmin=1, vmax=top))
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="count (log scale)")
    threshold = numpy.sqrt(top)                       # the middle of the log scale
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
    return figure


def plot_confusion(matrix: Any, path: str | os.PathLike,
                   class_names: Sequence[str] | None = None, title: str = "Confusion matrix",
                   ) -> Path:
    """``confusion_figure(matrix, class_names, title)`` saved as a PNG at ``path``."""
    return _save(confusion_figure(matrix, class_names, title), path)
