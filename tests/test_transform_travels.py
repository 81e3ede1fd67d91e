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


# --------------------------------------------------------------------------- every consumer
# A model trained from Python as the README shows (fit with a Normalize loader, then
# minicnn.save(model, path, optimizer=opt)): the transform lives on the model and in the
# checkpoint's "transform", never in meta. Export and visualize must read it from there.

def _trained_the_readme_way(tmp_path):
    x, y = _data()
    model = _model()
    norm = Normalize(0.4, 0.2)
    opt = minicnn.optim.SGD(model.parameters(), 0.1)
    model.fit(DataLoader(x, y, batch_size=32, seed=0, transform=norm), epochs=1, optimizer=opt,
              progress=False, verbose=False)
    path = minicnn.save(model, tmp_path / "model.npz", optimizer=opt)
    return model, norm, path, x


def test_one_function_gives_a_models_transform(tmp_path):
    from minicnn.data import model_transform
    model, norm, path, _ = _trained_the_readme_way(tmp_path)
    assert model_transform(model) is norm
    assert model_transform(minicnn.load(path)).config() == norm.config()
    assert model_transform(_model()) is None


def test_export_with_preprocessing_reads_the_models_transform(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from minicnn.cli.commands import main as cli_main
    model, norm, path, x = _trained_the_readme_way(tmp_path)
    out = tmp_path / "m.onnx"
    assert cli_main(["export", str(path), str(out), "--include-preprocessing"]) == 0
    pixels = x[:8, None]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"input": pixels})[0]
    np.testing.assert_allclose(got, model.predict(pixels), rtol=1e-5, atol=1e-5)
    assert "Normalize(mean=0.4, std=0.2)" in capsys.readouterr().out     # says which
    # from Python: the model itself (its input_transform is set) exports the same file
    minicnn.export_onnx(model, tmp_path / "py.onnx", include_preprocessing=True)
    assert (tmp_path / "py.onnx").read_bytes() == out.read_bytes()


def test_export_with_preprocessing_refuses_a_model_without_a_transform(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="has no input transform"):
        minicnn.export_onnx(_model(), tmp_path / "m.onnx", include_preprocessing=True)


def test_visualize_preprocesses_with_the_models_transform(tmp_path, monkeypatch):
    from minicnn.cli import commands as cli
    from minicnn.viz import network, plots
    _, norm, path, x = _trained_the_readme_way(tmp_path)
    calls = []
    monkeypatch.setattr(plots, "available", lambda: True)
    monkeypatch.setattr(network, "write_pictures", lambda model, xb, out, names, label:
                        calls.append(xb) or [])
    image = tmp_path / "digit.pgm"
    image.write_bytes(b"P5 4 4 255\n" + x[0].tobytes())
    assert cli.main(["visualize", str(path), "--image", str(image)]) == 0
    (xb,) = calls
    from minicnn.data.images import image_for_model
    fitted, _ = image_for_model(image, (1, 4, 4))             # as predict reads the file
    np.testing.assert_allclose(xb, norm(fitted[None, None]), rtol=1e-6)


# --------------------------------------------------------------------------- predict's forms

def test_predict_takes_one_image_and_gives_a_batch_of_one():
    x, _ = _data(4)
    model = _model()
    model.input_transform = Normalize(0.4, 0.2)
    batch = model.predict(x)
    np.testing.assert_allclose(model.predict(x[0]), batch[:1], rtol=1e-6)        # (H, W)
    np.testing.assert_allclose(model.predict(x[0][None]), batch[:1], rtol=1e-6)  # (1, H, W)
    np.testing.assert_allclose(model.predict(x[:1, None][0]), batch[:1], rtol=1e-6)  # (C, H, W)
    proba = model.predict_proba(x)
    assert proba.shape == (4, 3) and np.allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(proba.argmax(axis=1), batch.argmax(axis=1))
    np.testing.assert_array_equal(model.predict_classes(x), batch.argmax(axis=1))
    assert model.predict_classes(x[0]).shape == (1,)


def test_fit_predict_evaluate_show_their_real_signatures():
    import inspect
    model = _model()
    assert list(inspect.signature(model.fit).parameters)[:3] == ["train_data", "epochs",
                                                                 "optimizer"]
    assert list(inspect.signature(model.predict).parameters) == ["x", "batch_size", "transform"]
    assert "data" in inspect.signature(model.evaluate).parameters
    assert "raw images" in model.predict.__doc__ and "epochs" in model.fit.__doc__


def test_predict_warns_when_float_input_looks_already_normalised():
    x, _ = _data(4)
    model = _model()
    norm = Normalize(0.4, 0.2)
    model.input_transform = norm
    raw = model.predict(x.astype(np.float32) / 255)          # floats in [0, 1]: no warning
    np.testing.assert_allclose(raw, model.predict(x), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="looks already normalised"):
        model.predict(norm(x))
    np.testing.assert_allclose(model.predict(norm(x), transform=lambda a: a), raw,
                               rtol=1e-5, atol=1e-5)


def test_a_sequential_without_input_shape_knows_it_after_a_batch(tmp_path):
    pytest.importorskip("onnx")
    minicnn.manual_seed(0)
    model = minicnn.Sequential([Flatten(), Dense(16, 3)])
    x, _ = _data(4)
    model.predict(x / np.float32(255))                        # (N, 4, 4) -> (N, 1, 4, 4)
    assert model.seen_input_shape == (1, 4, 4)
    path = minicnn.export_onnx(model, tmp_path / "m.onnx")
    assert path.stat().st_size > 0
