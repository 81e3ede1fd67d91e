"""examples/understanding_convolution.ipynb runs from top to bottom without an error: executed
with nbclient in a python3 kernel of this interpreter, in a temporary folder, on the real MNIST
files (skipped without nbclient or $MINICNN_DATA)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import mnist_root

from minicnn.viz import plots

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "understanding_convolution.ipynb"


@pytest.mark.slow
def test_understanding_convolution_notebook_runs(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed")
    root = mnist_root()
    if not plots.available():
        pytest.skip("matplotlib is not installed")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), \
        "store the notebook without outputs"
    # the kernel imports this checkout's minicnn, whatever its working folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MINICNN_DATA", str(Path(root).resolve()))
    monkeypatch.delenv("MINICNN_BACKEND", raising=False)
    # one more cell, not stored: the kernel runs this interpreter (so this environment's minicnn)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print('EXE', sys.executable)"))
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                              # raises CellExecutionError on any error
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(images) == 4                       # correlation, filters, feature maps, im2col
    text = "".join(output.get("text", "") for cell in notebook.cells
                   for output in cell.get("outputs", []))
    assert "test accuracy" in text and "the layer computed" in text
    exe = text.split("EXE ")[-1].strip()
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)
