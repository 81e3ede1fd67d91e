"""Plots: the confusion matrix's colour scale shows the error cells."""
import numpy as np
import pytest

from minicnn.viz import plots

pytest.importorskip("matplotlib")


def test_confusion_uses_a_log_scale_on_which_errors_show(tmp_path):
    from matplotlib.colors import LogNorm
    matrix = np.array([[980, 3, 0], [1, 1130, 4], [0, 0, 1000]])
    figure = plots.confusion_figure(matrix, ["a", "b", "c"])
    image = figure.axes[0].images[0]
    assert isinstance(image.norm, LogNorm) and image.norm.vmin == 1
    assert image.get_array().mask[0, 2] and not image.get_array().mask[0, 1]   # zeros blank
    rgba = image.to_rgba(image.get_array())
    white = np.array([1.0, 1.0, 1.0, 1.0])
    assert np.linalg.norm(rgba[0, 1] - white) > 0.15            # 3 errors: visibly coloured
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "1130" in texts and texts.count("0") == 3
    path = plots.plot_confusion(matrix, tmp_path / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
