"""The input transform travels with the model: fit keeps it, checkpoints save it, and
predict/evaluate apply it to raw images."""
import warnings

import numpy as np
import pytest

import minicnn
from minicnn.data import DataLoader, Normalize
from minicnn.layers import Dense, Flatten


def _model():
    minicnn.manual_seed(0)
    return minicnn.Sequential([Flatten(), Dense(16, 3)], input_shape=(1, 4, 4))


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 4, 4), dtype=np.uint8), rng.integers(0, 3, n)


def test_fit_keeps_the_transform_and_save_load_carry_it(tmp_path):
    x, y = _data()
    model = _model()
    norm = Normalize(0.4, 0.2)
    model.fit(DataLoader(x, y, batch_size=32, seed=0, transform=norm), epochs=1,
              optimizer=minicnn.optim.SGD(model.parameters(), 0.1), progress=False)
    assert model.input_transform is norm
    expected = model.predict(norm(x[:, None]).astype(np.float32), transform=lambda a: a)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)          # raw uint8
    np.testing.assert_allclose(model.predict(x[:, None]), expected, rtol=1e-6)   # (N, 1, H, W)
    minicnn.save(model, tmp_path / "m.npz")
    twin = minicnn.load(tmp_path / "m.npz")
    assert twin.input_transform.config() == norm.config()
    np.testing.assert_allclose(twin.predict(x), expected, rtol=1e-6)
    assert twin.evaluate((x, y)) == model.evaluate((x, y))


def test_a_model_without_a_transform_says_so_once():
    x, _ = _data(8)
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(x)
        model.predict(x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no input transform" in messages[0]


def test_a_corrupt_stored_transform_is_a_checkpoint_error(tmp_path):
    model = _model()
    model.input_transform = Normalize(0.1, 0.3)
    path = minicnn.save(model, tmp_path / "m.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    text = arrays["__minicnn__"].tobytes().decode().replace('"Normalize"', '"Sharpen"')
    arrays["__minicnn__"] = np.frombuffer(text.encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(minicnn.CheckpointError, match="bad.npz: corrupt input transform"):
        minicnn.load(tmp_path / "bad.npz")
