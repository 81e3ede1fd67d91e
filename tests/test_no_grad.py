"""minicnn.no_grad(): the same outputs as a normal forward, nothing kept for backward."""
import numpy as np
import pytest

import minicnn
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, conv


def _model():
    minicnn.manual_seed(0)
    return minicnn.Sequential([Conv2D(2, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                               Dense(4 * 4 * 4, 3)], input_shape=(2, 8, 8))


def _holds_array(value):
    if isinstance(value, tuple | list):
        return any(_holds_array(v) for v in value)
    return hasattr(value, "shape")


def test_no_grad_matches_forward_and_keeps_nothing(monkeypatch):
    model = _model()
    x = np.random.default_rng(0).standard_normal((9, 2, 8, 8)).astype(np.float32)
    expected = model.forward(x, training=False)
    model.clear_cache()
    # a tiny slice size forces Conv2D through several slices of the batch
    monkeypatch.setattr(conv, "INFERENCE_COLUMNS", 2 * 8 * 8 * 2 * 9)
    with minicnn.no_grad():
        got = model.forward(x, training=False)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    kept = [layer.name for layer in model.layers if _holds_array(getattr(layer, "_cache", None))]
    assert kept == []
    with pytest.raises(ValueError, match="no_grad"):
        model.backward(np.ones_like(got))


def test_grad_mode_is_restored_after_an_error():
    from minicnn.layers.base import grad_enabled
    with pytest.raises(RuntimeError):
        with minicnn.no_grad():
            assert not grad_enabled()
            raise RuntimeError("boom")
    assert grad_enabled()
