"""The README's Python blocks run as written: in order, in one fresh interpreter, as a reader
pasting them into one prompt would (in a temporary folder, with the real MNIST files)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_its_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5 and "model.fit(" in "".join(blocks)


@pytest.mark.skipif(not os.environ.get("MINICNN_DATA"), reason="MINICNN_DATA is not set (the "
                    "fit block loads the real MNIST)")
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the ONNX block "
                    "needs onnxruntime (pip install onnxruntime)")
def test_the_readme_python_blocks_run_in_order(tmp_path):
    code = "\n".join(python_blocks(README.read_text()))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Total params: 421,642" in run.stdout and "Evaluation(loss=" in run.stdout
    assert (tmp_path / "ref-cnn.npz").is_file() and (tmp_path / "model.onnx").is_file()
