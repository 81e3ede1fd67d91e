"""minicnn.visualize and `minicnn visualize`: the numbers behind each picture (an im2col window's
products add up to the layer's output, filter grids, feature-map shapes, cross-correlation vs
convolution), and every PNG written from a tiny checkpoint through the command line."""
from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import mnist_root

import minicnn
from minicnn.cli import commands as cli
from minicnn.data import Normalize, datasets, images
from minicnn.layers import Add, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU
from minicnn.viz import network as visualize
from minicnn.viz import plots

ROOT = Path(__file__).resolve().parents[1]
needs_matplotlib = pytest.mark.skipif(not plots.available(), reason="matplotlib not installed")


def tiny_model(seed: int = 0) -> minicnn.Sequential:
    minicnn.manual_seed(seed)
    return minicnn.Sequential([
        Conv2D(1, 4, 3, padding=1), ReLU(), MaxPool2D(2),          # (4, 14, 14)
        Conv2D(4, 6, 3), ReLU(), MaxPool2D(2),                     # (6, 6, 6)
        Flatten(), Dense(6 * 6 * 6, 10),
    ], input_shape=(1, 28, 28))


def image(seed: int = 0, shape=(1, 28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def window_by_definition(x: np.ndarray, conv: Conv2D, oh: int, ow: int) -> np.ndarray:
    """The (C, kh, kw) window of image x (C, H, W) for output (oh, ow), read pixel by pixel:
    x[c, oh*s - p + i*d, ow*s - p + j*d], or 0 outside the image."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, \
        conv.dilation
    c, h, w = x.shape
    out = np.zeros((c, kh, kw), dtype=x.dtype)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                r, q = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                if 0 <= r < h and 0 <= q < w:
                    out[ch, i, j] = x[ch, r, q]
    return out


# =========================================================================== im2col_example

@pytest.mark.parametrize("conv_args", [
    dict(in_channels=1, out_channels=32, kernel_size=3, padding=1),
    dict(in_channels=3, out_channels=5, kernel_size=(3, 2), stride=2, padding=1),
    dict(in_channels=2, out_channels=4, kernel_size=3, dilation=2, bias=False),
])
def test_products_add_up_to_the_layer_output(conv_args):
    minicnn.manual_seed(1)
    conv = Conv2D(**conv_args)
    conv.weight.data[...] = np.random.default_rng(2).standard_normal(conv.weight.shape)
    x = image(3, (conv.in_channels, 11, 12))
    y = conv.forward(x[None])                                     # the layer, called by us
    _, o, ho, wo = y.shape
    for f, row in [(0, 0), (o - 1, ho * wo - 1), (o // 2, (ho // 2) * wo + wo // 3)]:
        ex = visualize.im2col_example(conv, x, row=row, filter=f)
        oh, ow = divmod(row, wo)
        assert ex["position"] == (oh, ow) and ex["row"] == row and ex["filter"] == f
        assert ex["output"] == pytest.approx(float(y[0, f, oh, ow]), rel=1e-6, abs=1e-6)
        assert ex["sum"] + ex["bias"] == pytest.approx(ex["output"], rel=1e-5, abs=1e-5)
        k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert ex["products"].shape == (k,)
        np.testing.assert_allclose(ex["products"].sum(dtype=np.float64), ex["sum"], rtol=1e-12)
        # the window, read by definition, and the im2col row in (i, j, c) order
        window = window_by_definition(x, conv, oh, ow)
        np.testing.assert_array_equal(ex["window"], window)
        np.testing.assert_array_equal(ex["cols_row"], window.transpose(1, 2, 0).reshape(-1))
        np.testing.assert_array_equal(ex["cols"][row], ex["cols_row"])
        kh, kw = conv.kernel_size
        for i, j, c in [(0, 0, 0), (kh - 1, kw - 1, conv.in_channels - 1), (kh // 2, 1, 0)]:
            index = (i * kw + j) * conv.in_channels + c
            assert ex["filter_vector"][index] == conv.weight.data[f, c, i, j]
            assert ex["cols_row"][index] == window[c, i, j]
        assert ex["bias"] == (0.0 if conv.bias is None else float(conv.bias.data[f]))


def test_the_default_row_is_the_strongest_response():
    model = tiny_model()
    conv = model.layers[0]
    x = image(4)
    ex = visualize.im2col_example(conv, x, filter=2)
    y = conv.forward(x[None])[0, 2]
    assert ex["output"] == pytest.approx(float(y.max()), rel=1e-6)
    assert ex["row"] == int(y.argmax())
    assert ex["cols"].shape == (28 * 28, 9)


def test_bad_row_or_filter_is_one_clear_error():
    conv = tiny_model().layers[0]
    with pytest.raises(ValueError, match=r"filter 4 is out of range 0\.\.3"):
        visualize.im2col_example(conv, image(), filter=4)
    with pytest.raises(ValueError, match=r"row 784 is out of range 0\.\.783"):
        visualize.im2col_example(conv, image(), row=784)
    with pytest.raises(ValueError, match=r"expected an image \(C, H, W\) or a batch"):
        visualize.im2col_example(conv, np.zeros((28, 28), np.float32))


# =========================================================================== filters, activations

def test_filter_grids_counts_and_values():
    minicnn.manual_seed(0)
    model = minicnn.Sequential([Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2),
                                Conv2D(32, 64, 3, padding=1), ReLU(), MaxPool2D(2),
                                Flatten(), Dense(64 * 7 * 7, 10)], input_shape=(1, 28, 28))
    grids = visualize.filter_grids(model)
    assert [label.split(":")[0] for label, _ in grids] == ["conv2d_1", "conv2d_2"]
    (label1, tiles1), (label2, tiles2) = grids
    assert tiles1.shape == (32, 3, 3) and "32 filters of 1x3x3" in label1
    np.testing.assert_array_equal(tiles1, model.layers[0].weight.data[:, 0])
    assert tiles2.shape == (64, 3, 3) and "mean over the 32 input channels" in label2
    np.testing.assert_allclose(tiles2, model.layers[3].weight.data.mean(axis=1), rtol=1e-6)


def test_conv_layers_of_a_graph_model():
    minicnn.manual_seed(0)
    x = minicnn.Input((1, 8, 8))
    h = ReLU()(Conv2D(1, 3, 3, padding=1)(x))
    r = Add()(h, Conv2D(3, 3, 3, padding=1)(h))
    model = minicnn.Model(x, Dense(3, 2)(GlobalAvgPool2D()(r)))
    assert [t.shape for _, t in visualize.filter_grids(model)] == [(3, 3, 3), (3, 3, 3)]
    acts = visualize.activations(model, image(1, (1, 8, 8)))
    assert [shape for _, shape, _ in acts] == [(1, 8, 8), (3, 8, 8), (3, 8, 8), (3, 8, 8),
                                               (3, 8, 8), (3,), (2,)]
    with minicnn.no_grad():
        expected = model.forward(image(1, (1, 8, 8))[None], training=False)
    np.testing.assert_allclose(acts[-1][2], expected, rtol=1e-6)


def test_activation_shapes_are_the_layers_output_shapes():
    model = tiny_model()
    x = image(5)
    acts = visualize.activations(model, x)
    assert acts[0][0] == "input" and acts[0][1] == (1, 28, 28)
    np.testing.assert_array_equal(acts[0][2], x[None])
    shape = (1, 28, 28)
    for layer, (name, got, array) in zip(model.layers, acts[1:], strict=True):
        shape = layer.output_shape(shape)
        assert name == layer.name and got == shape and array.shape == (1,) + shape
    assert [n for n, _, _ in acts][1:4] == ["conv2d_1", "relu_1", "maxpool2d_1"]
    with minicnn.no_grad():
        logits = model.forward(x[None], training=False)
    np.testing.assert_allclose(acts[-1][2], logits, rtol=1e-6)
    probs = visualize.probabilities(acts[-1][2])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probs.argmax() == logits.argmax()
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)


def test_activations_keep_nothing_for_backward():
    model = tiny_model()
    visualize.activations(model, image())
    assert all(layer.__dict__.get("_saved") is None for layer in model.layers)


# =========================================================================== correlation example

def load_conv_explained():
    spec = importlib.util.spec_from_file_location("conv_explained_for_visualize",
                                                  ROOT / "examples" / "conv_explained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_correlation_example_matches_conv_explained():
    conv = load_conv_explained()
    np.testing.assert_array_equal(visualize.EXAMPLE_IMAGE, conv.IMAGE)
    np.testing.assert_array_equal(visualize.EXAMPLE_KERNEL, conv.ASYMMETRIC)
    ex = visualize.correlation_example()
    np.testing.assert_array_equal(ex["correlation"],
                                  conv.cross_correlation_loops(conv.IMAGE, conv.ASYMMETRIC))
    np.testing.assert_array_equal(ex["convolution"],
                                  conv.true_convolution(conv.IMAGE, conv.ASYMMETRIC))
    np.testing.assert_array_equal(ex["flipped"], conv.flip(conv.ASYMMETRIC))
    assert not np.array_equal(ex["correlation"], ex["convolution"])
    same = visualize.correlation_example(conv.IMAGE, conv.FILTER)
    np.testing.assert_array_equal(same["correlation"], conv.EXPECTED)
    np.testing.assert_array_equal(same["convolution"], conv.EXPECTED)


# =========================================================================== the pictures

@needs_matplotlib
def test_figures_have_their_panels():
    model = tiny_model()
    figure = visualize.filters(model)
    images = [ax.images[0] for ax in figure.axes if ax.images]
    assert len(images) == 2                                     # one mosaic per Conv2D
    for shown in images:                                        # diverging, centred on zero
        assert shown.get_cmap().name.startswith("RdBu_r")
        low, high = shown.get_clim()
        assert low == -high and high > 0
    assert len(figure.axes) == 4                                # + one colourbar each
    maps = visualize.feature_maps(model, image(), class_names=list("abcdefghij"))
    titles = [ax.get_title() for ax in maps.axes]
    for needle in ("input 1x28x28", "conv2d_1 (Conv2D) 4x28x28", "maxpool2d_1 (MaxPool2D) "
                   "4x14x14", "conv2d_2 (Conv2D) 6x12x12", "maxpool2d_2 (MaxPool2D) 6x6x6"):
        assert needle in titles
    assert any(t.startswith("predicted ") and "(p = " in t for t in titles)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """A minimal 8-bit greyscale PNG."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))
    h, w = pixels.shape
    raw = b"".join(b"\0" + row.tobytes() for row in pixels.astype(np.uint8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0,
                                                                        0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    minicnn.save(tiny_model(), run / "model.npz", dataset="mnist",
                 transform=Normalize(0.1307, 0.3081).config())
    return run


@pytest.fixture
def digit_png(tmp_path) -> Path:
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255                                     # a "1"
    return write_png(tmp_path / "digit.png", digit)


@needs_matplotlib
@pytest.mark.slow
def test_cli_writes_every_png(run_dir, digit_png, capsys):
    assert cli.main(["visualize", str(run_dir), "--image", str(digit_png)]) == 0
    assert f"wrote {run_dir}/" in capsys.readouterr().out       # default: the model's folder
    for name in visualize.PICTURES:
        data = (run_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG") and 5_000 < len(data) < 400_000, name


@pytest.fixture
def recorded(monkeypatch) -> list:
    """Replace write_pictures with a recorder of its arguments."""
    calls = []
    monkeypatch.setattr(plots, "available", lambda: True)
    monkeypatch.setattr(visualize, "write_pictures",
                        lambda model, x, out, names, label: calls.append((x, out, names, label))
                        or [])
    return calls


def test_cli_preprocesses_a_file_as_trained(run_dir, digit_png, tmp_path, recorded):
    out = tmp_path / "pictures"
    assert cli.main(["visualize", str(run_dir / "model.npz"), "--image", str(digit_png),
                     "--out", str(out)]) == 0
    (x, where, names, label), = recorded
    assert where == out and label is None and names == [str(d) for d in range(10)]
    expected = (np.float32(images.read_image(digit_png)) / 255 - 0.1307) / 0.3081
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], expected, rtol=1e-5, atol=1e-5)


def test_cli_fits_a_file_as_predict_does(run_dir, tmp_path, recorded, capsys):
    """A photo of any size, dark on light: visualize fits it as predict does (one function)."""
    paper = np.full((40, 30), 250, np.uint8)
    paper[8:32, 13:17] = 20                                      # a dark "1" on white paper
    photo = write_png(tmp_path / "photo.png", paper)
    assert cli.main(["visualize", str(run_dir), "--image", str(photo)]) == 0
    assert "light background; inverted" in capsys.readouterr().err
    (x, _, _, _), = recorded
    fitted, inverted = images.image_for_model(photo, (1, 28, 28))
    assert inverted and fitted.shape == (28, 28)
    np.testing.assert_allclose(x[0, 0], Normalize(0.1307, 0.3081)(fitted), rtol=1e-6)
    assert cli.main(["predict", str(run_dir), str(photo)]) == 0     # predict takes it too


def test_cli_test_set_index(run_dir, recorded):
    mnist_root()
    assert cli.main(["visualize", str(run_dir), "--image", "7"]) == 0
    (x, where, _, label), = recorded
    _, (xt, yt) = datasets.load_mnist()
    assert where == run_dir and label == int(yt[7])
    np.testing.assert_allclose(x[0, 0], (xt[7] / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    small = write_png(tmp_path / "small.png", np.zeros((5, 7), np.uint8))
    monkeypatch.setattr(plots, "available", lambda: True)     # these come before drawing
    (tmp_path / "bad.png").write_text("not an image")
    assert cli.main(["visualize", str(run_dir), "--image", str(tmp_path / "bad.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.png: not a" in err
    assert cli.main(["visualize", str(tmp_path)]) == 1
    assert "a folder without model.npz" in capsys.readouterr().err
    monkeypatch.setattr(plots, "available", lambda: False)
    assert cli.main(["visualize", str(run_dir), "--image", str(small)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[plot]"' in err
    with pytest.raises(plots.PlotUnavailable, match=r'pip install -e "\.\[plot\]"'):
        visualize.filters(tiny_model())


@needs_matplotlib
def test_conv_explained_draws_the_picture(tmp_path, capsys):
    load_conv_explained().main(["--out", str(tmp_path)])
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "correlation_vs_convolution.png").read_bytes().startswith(b"\x89PNG")
