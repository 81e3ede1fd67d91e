"""The examples run, and what they claim is true: examples/conv_explained.py and
examples/custom_layer.py, imported from their paths."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import models

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def conv():
    return load("conv_explained")


@pytest.fixture(scope="module")
def custom():
    return load("custom_layer")


def run_script(name: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    env.pop("MINICNN_BACKEND", None)
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# =========================================================================== conv_explained.py

EXPECTED = [[4, 3, 4], [2, 4, 3], [2, 3, 4]]


def test_the_worked_example_data(conv):
    assert conv.IMAGE.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                                   [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
    assert conv.FILTER.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert conv.EXPECTED.tolist() == EXPECTED


@pytest.mark.parametrize("method", ["cross_correlation_loops", "cross_correlation_dot",
                                    "cross_correlation_im2col", "cross_correlation_conv2d"])
def test_every_method_gives_the_expected_output(conv, method):
    result = getattr(conv, method)(conv.IMAGE, conv.FILTER)
    assert np.asarray(result).shape == (3, 3)
    np.testing.assert_array_equal(result, EXPECTED)       # exact: small integers


def test_im2col_matrix_rows_are_the_flattened_windows(conv):
    matrix = conv.im2col_matrix(conv.IMAGE, (3, 3))
    assert matrix.shape == (9, 9)
    for r in range(3):
        for c in range(3):
            np.testing.assert_array_equal(matrix[3 * r + c],
                                          conv.IMAGE[r:r + 3, c:c + 3].reshape(-1))


def test_symmetric_filter_convolution_equals_cross_correlation(conv):
    np.testing.assert_array_equal(conv.flip(conv.FILTER), conv.FILTER)
    np.testing.assert_array_equal(conv.true_convolution(conv.IMAGE, conv.FILTER), EXPECTED)


def test_asymmetric_kernel_convolution_flips(conv):
    k = conv.ASYMMETRIC
    assert not np.array_equal(conv.flip(k), k)
    xcorr = conv.cross_correlation_loops(conv.IMAGE, k)
    true_conv = conv.true_convolution(conv.IMAGE, k)
    np.testing.assert_array_equal(xcorr, [[1, 1, 1], [0, 1, 1], [0, 0, 1]])      # top-left pixels
    np.testing.assert_array_equal(true_conv, [[1, 1, 1], [1, 1, 0], [1, 0, 0]])  # bottom-right
    assert not np.array_equal(xcorr, true_conv)
    np.testing.assert_array_equal(true_conv, conv.cross_correlation_loops(conv.IMAGE, conv.flip(k)))
    np.testing.assert_array_equal(true_conv,
                                  conv.cross_correlation_conv2d(conv.IMAGE, conv.flip(k)))


@pytest.mark.parametrize("seed", range(3))
def test_methods_agree_on_random_inputs(conv, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(-3, 4, size=(6, 7))
    kernel = rng.integers(-2, 3, size=(3, 2))             # non-square, asymmetric
    expected = conv.cross_correlation_loops(image, kernel)
    for method in (conv.cross_correlation_dot, conv.cross_correlation_im2col,
                   conv.cross_correlation_conv2d):
        np.testing.assert_array_equal(method(image, kernel), expected)
    true_conv = conv.true_convolution(image, kernel)
    np.testing.assert_array_equal(true_conv, conv.cross_correlation_loops(image, conv.flip(kernel)))
    assert not np.array_equal(true_conv, expected)


def test_numpy_1d_convention(conv):
    convolved, correlated, correlated_flipped = conv.numpy_1d_check()
    np.testing.assert_array_equal(convolved, correlated_flipped)
    assert not np.array_equal(convolved, correlated)


def test_conv_explained_main_prints_a_consistent_story(conv, capsys):
    conv.main()
    out = capsys.readouterr().out
    assert f"all four equal {EXPECTED}: True" in out
    assert ": False" not in out
    assert "they differ: True" in out
    assert "true convolution == cross-correlation with the flipped kernel: True" in out


# =========================================================================== custom_layer.py

def test_custom_layer_gradients(custom):
    errors = custom.check_gradients(verbose=False)
    assert set(errors) == {"input", "s"}
    assert max(errors.values()) < 1e-6


def test_custom_layer_keeps_the_whole_contract(custom, monkeypatch):
    monkeypatch.setitem(sys.modules, custom.__name__, custom)     # importable, so picklable
    custom.check_contract()                      # raises LayerContractError naming a rule
    assert custom.Scale.per_sample is True


def test_custom_layer_forward_backward_by_hand(custom):
    layer = custom.Scale(2).astype(np.float64)
    layer.s.data[...] = np.array([2.0, -3.0]).reshape(1, 2, 1, 1)
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4))
    y = layer.forward(x)
    np.testing.assert_array_equal(y[:, 0], 2 * x[:, 0])
    np.testing.assert_array_equal(y[:, 1], -3 * x[:, 1])
    dy = np.ones_like(y)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx[:, 1], -3 * np.ones((3, 4, 4)))
    np.testing.assert_allclose(layer.s.grad.reshape(-1), x.sum(axis=(0, 2, 3)), rtol=1e-14)
    with pytest.raises(ValueError, match="Scale.*backward called before forward"):
        layer.backward(dy)
    with pytest.raises(ValueError, match=r"Scale.*2 input channels.*\(3, 3, 4, 4\)"):
        layer.forward(np.ones((3, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"Scale.*\(2, H, W\).*\(3, 8, 8\)"):
        minicnn.Sequential([custom.Scale(2)], input_shape=(3, 8, 8))


def test_custom_layer_model_trains(custom):
    losses = custom.train(steps=40, verbose=False)
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]


def test_custom_layer_gradchecks_inside_a_model_and_round_trips(custom):
    minicnn.manual_seed(0)
    model = custom.build_model()
    errors = minicnn.gradcheck(model, (2, 1, 8, 8))
    assert "scale_1.s" in errors and max(errors.values()) < 1e-6
    twin = models.layer_from_config({"class": "Sequential",
                                     "config": json.loads(json.dumps(model.config()))})
    assert type(twin.layers[1]).__name__ == "Scale"
    for (_, p), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        q.data = p.data.copy()
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(twin.forward(x), model.forward(x))


def test_custom_layer_uses_its_inputs_module_not_numpy():
    """The layer computes with its input's array module (the script imports numpy only for its
    data) and keeps activations through the base class."""
    source = (EXAMPLES / "custom_layer.py").read_text()
    layer_source = source[source.index("class Scale"):source.index("def check_gradients")]
    assert "np." not in layer_source and "backend.xp" not in layer_source
    assert "get_array_module" in layer_source and "save_for_backward" in layer_source


# =========================================================================== as scripts

@pytest.mark.parametrize("name,needle", [("conv_explained", "all four equal"),
                                         ("custom_layer", "loss ")])
def test_examples_run_as_scripts(name, needle):
    result = run_script(name)
    assert result.returncode == 0, result.stderr
    assert needle in result.stdout


def test_conv_algorithms_example_times_both_paths(capsys):
    load("conv_algorithms").main(["--model", "vgg", "--blocks", "1", "--steps", "1",
                                  "--batch-size", "4", "--pause", "0"])
    out = capsys.readouterr().out
    assert "vgg: 5 of 6 convolutions 3x3 stride 1" in out and "auto / im2col = " in out


def test_split_threshold_example_times_whole_and_split(capsys):
    from minicnn.training import parallel
    threshold = parallel.MIN_SLICE_WORK
    load("split_threshold").main(["--batches", "32", "--blocks", "1", "--steps", "1",
                                  "--pause", "0"])
    out = capsys.readouterr().out
    assert parallel.MIN_SLICE_WORK == threshold                 # put back as it was
    rows = [line for line in out.splitlines() if line.startswith("| ") and "| 32 |" in line]
    assert len(rows) == 5 and "| ref-cnn | 32 | 2,826,816 |" in out


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINICNN_DATA"), reason="MINICNN_DATA is not set")
def test_denoising_example_improves_psnr(tmp_path):
    picture = tmp_path / "d.png"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "denoise_mnist.py"), "--epochs", "2", "--limit", "3000",
         "--test-limit", "200", "--picture", str(picture), "--out", str(tmp_path / "ae.npz")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=tmp_path, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("epoch 2/2")][0]
    noisy, denoised = (float(v.split()[0]) for v in line.split("noisy ")[1].split("-> denoised "))
    assert denoised > noisy + 2, line
    assert (tmp_path / "ae.npz").is_file()
    assert picture.is_file() or "matplotlib is not installed" in result.stdout
