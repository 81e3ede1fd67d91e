"""Activations keep only what their derivative needs, so the other array can be freed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minicnn.layers import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("make,kept", [(ReLU, "output"), (Sigmoid, "output"), (Tanh, "output"),
                                       (Softmax, "output"), (LeakyReLU, "input"),
                                       (Identity, "nothing")])
def test_each_activation_keeps_only_what_its_derivative_needs(make, kept):
    layer = make()
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    y = layer.forward(x)
    saved_x, saved_y = layer.__dict__["_saved"]
    assert (saved_x is x) == (kept == "input") and (saved_y is y) == (kept == "output")
    assert saved_x is None or saved_y is None


def test_the_reference_cnn_keeps_53_mib_at_batch_128():
    spec = importlib.util.spec_from_file_location("example_saved_memory",
                                                  ROOT / "examples" / "saved_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    total, rows = module.saved_bytes(128)
    assert dict(rows)["relu_1"] == 128 * 32 * 28 * 28 * 4          # its output only
    assert total <= 55_158_784                     # 74,491,904 when activations kept inputs too
