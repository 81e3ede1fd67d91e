"""ONNX export: the files pass onnx.checker and ONNX Runtime computes what minicnn computes.

Parity is float32 against float32: ``assert_allclose(rtol=1e-5, atol=ATOL * max|reference|)``.
The absolute part is for outputs that are small only by cancellation: a float32 sum of terms of
magnitude M carries rounding error of order eps * M * sqrt(terms) (eps = 1.2e-7) whatever the
sum's own size, and two correct implementations that add in another order (im2col GEMM here,
ONNX Runtime's direct convolution or fused BatchNorm there) differ by that much. ATOL = 1e-6
of the output's largest magnitude covers that for the sizes used here and nothing more (an
off-by-one padding, a transposed weight or a missing bias moves outputs by O(1) of it).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import zoo
from minicnn.cli.commands import main as cli_main
from minicnn.data import Normalize
from minicnn.layers import (
    Add,
    AvgPool2D,
    BatchNorm2D,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from minicnn.layers.adaptive_pooling import AdaptiveAvgPool2D
from minicnn.onnx.export import BUILTIN, DEFAULT_OPSET, ExportError, export_onnx
from minicnn.saving.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
CASES = 48
DENSE_ACTIVATIONS = (None, "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear",
                     "identity")


def _onnx():
    return pytest.importorskip("onnx")


def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def minicnn_output(model: Layer, x: np.ndarray) -> np.ndarray:
    with minicnn.no_grad():
        return minicnn.backend.to_numpy(model.forward(x, training=False))


def ort_output(path: Path, x: np.ndarray) -> np.ndarray:
    session = _ort().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def assert_parity(got: np.ndarray, ref: np.ndarray) -> float:
    """assert_allclose as the module docstring says; returns the worst relative error over the
    outputs not small by cancellation (|ref| >= ATOL/RTOL * max|ref|)."""
    assert got.dtype == np.float32 and got.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 0, "degenerate comparison: the reference output is all zeros"
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL * scale)
    big = np.abs(ref) >= (ATOL / RTOL) * scale
    return float((np.abs(got - ref)[big] / np.abs(ref[big])).max())


def export_and_compare(model: Layer, tmp_path: Path, name: str = "m", batch: int = 3,
                       seed: int = 0, **kwargs) -> float:
    """Export, check, run on two batch sizes (the batch axis is dynamic); worst relative error."""
    onnx = _onnx()
    path = export_onnx(model, tmp_path / f"{name}.onnx", **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    shape = model.input_shape if isinstance(model, minicnn.Sequential) else \
        model.input_tensor.shape
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in (batch, 1):
        x = rng.standard_normal((n, *shape), dtype=np.float32)
        worst = max(worst, assert_parity(ort_output(path, x), minicnn_output(model, x)))
    return worst


# =========================================================================== random models

def _pair(rng, lo: int, hi: int) -> tuple[int, int]:
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _randomize(layer: Layer, rng) -> Layer:
    """Non-trivial BatchNorm statistics and affine parameters (the defaults are 0 and 1)."""
    for sub in [layer] + [c for _, c in layer.named_children()]:
        if isinstance(sub, BatchNorm2D):
            c = sub.num_features
            sub.running_mean = rng.standard_normal(c).astype(np.float32)
            sub.running_var = rng.uniform(0.5, 2.0, c).astype(np.float32)
            sub.weight.data[...] = rng.uniform(0.5, 1.5, c)
            sub.bias.data[...] = rng.standard_normal(c)
    return layer


def random_image_layer(rng, c: int) -> Layer:
    """One randomly configured layer for (N, c, H, W) inputs (it may not fit; callers check)."""
    kind = rng.integers(0, 14)
    if kind <= 3:
        kernel = _pair(rng, 1, 4)
        pad = _pair(rng, 0, 2)
        return Conv2D(c, int(rng.integers(1, 6)), kernel, stride=_pair(rng, 1, 3),
                      padding=pad, dilation=_pair(rng, 1, 2), bias=bool(rng.integers(0, 2)))
    if kind <= 6:
        cls = MaxPool2D if kind <= 4 else AvgPool2D
        kernel = _pair(rng, 1, 4)
        pad = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        stride = None if rng.random() < 0.3 else _pair(rng, 1, 3)
        return cls(kernel, stride=stride, padding=pad)
    if kind == 7:
        return BatchNorm2D(c, eps=float(rng.choice([1e-5, 1e-3])))
    if kind == 8:
        return minicnn.Sequential([Conv2D(c, c, 3, padding=1), LeakyReLU(0.2), BatchNorm2D(c)])
    if kind == 9:
        return Softmax(axis=int(rng.choice([1, 2, 3, -1])))
    return [ReLU(), LeakyReLU(float(rng.uniform(0.01, 0.3))), Sigmoid(), Tanh(), Identity(),
            Dropout(0.5)][int(rng.integers(0, 6))] if kind < 13 else \
        [Identity(), Dropout(0.25)][int(rng.integers(0, 2))]


def random_trunk(rng, shape: tuple[int, ...], count: int) -> list[Layer]:
    layers = []
    while len(layers) < count:
        layer = random_image_layer(rng, shape[0])
        try:
            new = layer.output_shape(shape)
        except ValueError:
            continue                                     # does not fit: draw another
        layers.append(_randomize(layer, rng))
        shape = new
    return layers


def random_head(rng, shape: tuple[int, ...]) -> list[Layer]:
    """Pooling or Flatten, a Dense with any activation, then one whose activation cannot zero
    the whole output (so the comparison never degenerates to 0 == 0)."""
    r = rng.random()
    pools = [GlobalAvgPool2D()] if r < 0.3 else [AdaptiveAvgPool2D(1), Flatten()] if r < 0.45 \
        else [Flatten()]
    width, hidden = Flatten().output_shape(pools[0].output_shape(shape))[0], \
        int(rng.integers(4, 9))
    act = DENSE_ACTIVATIONS[int(rng.integers(0, len(DENSE_ACTIVATIONS)))]
    last = DENSE_ACTIVATIONS[int(rng.integers(2, len(DENSE_ACTIVATIONS)))]
    return [*pools, Dense(width, hidden, activation=act, bias=bool(rng.integers(0, 4))),
            Dense(hidden, 5, activation=last)]


def random_sequential(rng) -> tuple[minicnn.Sequential, minicnn.Sequential]:
    """A random model and its convolutional trunk alone (whose NCHW output is compared too)."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(6, 13)), int(rng.integers(6, 13)))
    trunk = minicnn.Sequential(random_trunk(rng, shape, int(rng.integers(1, 5))),
                               input_shape=shape)
    head = random_head(rng, trunk.output_shape(shape))
    return minicnn.Sequential(trunk.layers + head, input_shape=shape), trunk


def random_graph(rng) -> minicnn.Model:
    """A stem, two or three branches of shape-preserving layers, merged by Add or Concatenate."""
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(6, 11)), int(rng.integers(6, 11))
    x = minicnn.Input((c, h, w))
    width = int(rng.integers(2, 5))
    stem = ReLU()(Conv2D(c, width, 3, padding=1)(x))
    branches = [stem]
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.choice([1, 3, 5]))
        layers = [Conv2D(width, width, k, padding="same"),
                  [ReLU(), Tanh(), Sigmoid(), LeakyReLU(0.1), Dropout(0.3)][int(rng.integers(5))],
                  _randomize(BatchNorm2D(width), rng) if rng.random() < 0.5 else
                  AvgPool2D(3, stride=1, padding=1)]
        branch = stem
        for layer in layers:
            branch = layer(branch)
        branches.append(branch)
    if rng.random() < 0.5:
        merged = Add()(*branches)
    else:
        merged = Concatenate(axis=int(rng.choice([1, -1, 2])))(*branches)
    head = MaxPool2D(2, stride=1, padding=1)(merged)
    y = Dense(head.shape[0], 4, activation="softmax")(GlobalAvgPool2D()(head))
    return minicnn.Model(x, y)


def _walk(model: Layer):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _walk(layer)
        if isinstance(layer, Dense) and layer.activation is not None:
            yield layer.activation


@pytest.mark.slow
def test_random_models_match_onnxruntime(tmp_path):
    """A seeded loop over random Sequential and graph models covering every mapped layer."""
    _ort()
    rng = np.random.default_rng(2024)
    seen, activations, worst = set(), set(), 0.0
    for case in range(CASES):
        minicnn.manual_seed(case)
        models = [random_graph(rng)] if case % 4 == 3 else random_sequential(rng)
        for layer in _walk(models[0]):
            seen.add(type(layer))
            if isinstance(layer, Dense):
                activations.add(layer.config()["activation"])
        for i, model in enumerate(models):
            try:
                worst = max(worst, export_and_compare(model, tmp_path, f"case{case}_{i}",
                                                      seed=case))
            except AssertionError as exc:
                raise AssertionError(f"case {case}: {model!r}\n{exc}") from None
    assert set(BUILTIN) <= seen, set(BUILTIN) - seen
    assert minicnn.Sequential in seen                 # nested inside models
    assert set(DENSE_ACTIVATIONS) <= activations, set(DENSE_ACTIVATIONS) - activations
    print(f"{CASES} random models, worst relative error {worst:.2e}")


@pytest.mark.parametrize("layer,shape", [
    (Conv2D(2, 3, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)), (2, 7, 9)),
    (Conv2D(2, 3, 3, padding="same", dilation=2, bias=False), (2, 8, 8)),
    (MaxPool2D(3, stride=2, padding=1), (2, 7, 7)),         # overlapping, padded: pads never win
    (MaxPool2D((2, 3), stride=(1, 2), padding=(1, 1)), (2, 5, 6)),
    (AvgPool2D(3, stride=2, padding=1), (2, 7, 7)),         # padding counts as zeros
    (AvgPool2D((3, 2), stride=1, padding=(1, 0)), (2, 5, 6)),
    (Softmax(axis=2), (2, 4, 5)), (Softmax(axis=-1), (2, 4, 5)),
])
def test_single_layer_configurations(layer, shape, tmp_path):
    _ort()
    export_and_compare(minicnn.Sequential([layer], input_shape=shape), tmp_path)


@pytest.mark.parametrize("merge", [Concatenate(axis=1), Concatenate(axis=2), Concatenate(-1),
                                   Add()])
def test_merges_of_three_branches(merge, tmp_path):
    _ort()
    x = minicnn.Input((2, 5, 6))
    branches = [Conv2D(2, 2, 3, padding=1)(x), Tanh()(x), MaxPool2D(3, stride=1, padding=1)(x)]
    export_and_compare(minicnn.Model(x, merge(*branches)), tmp_path)


def test_max_pool_padding_never_wins(tmp_path):
    """All-negative inputs: a padding cell read as 0 would win every border window."""
    _ort()
    model = minicnn.Sequential([MaxPool2D(3, stride=2, padding=1)], input_shape=(1, 5, 5))
    x = -1.0 - np.random.default_rng(0).random((2, 1, 5, 5), dtype=np.float32)
    got = ort_output(export_onnx(model, tmp_path / "p.onnx"), x)
    np.testing.assert_array_equal(got, minicnn_output(model, x))
    assert (got < -1).all()


# =========================================================================== named models

def test_reference_cnn_matches_and_is_named_after_its_layers(tmp_path):
    onnx = _onnx()
    minicnn.manual_seed(0)
    model = zoo.build_model("ref-cnn")
    export_and_compare(model, tmp_path, "ref", batch=16)
    proto = onnx.load(str(tmp_path / "ref.onnx"))
    assert proto.ir_version == 8 and [(o.domain, o.version) for o in proto.opset_import] == \
        [("", DEFAULT_OPSET)]
    assert [n.name for n in proto.graph.node] == [
        "conv2d_1", "relu_1", "maxpool2d_1", "conv2d_2", "relu_2", "maxpool2d_2", "flatten_1",
        "dense_1", "dense_1.relu", "dense_2"]
    names = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    assert names == {k: p.shape for k, p in model.named_parameters()}
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("input", ["N", 1, 28, 28])
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]


def residual_model() -> minicnn.Model:
    x = minicnn.Input((3, 12, 12))
    h = ReLU()(BatchNorm2D(16)(Conv2D(3, 16, 3, padding=1, bias=False)(x)))
    r = BatchNorm2D(16)(Conv2D(16, 16, 3, padding=1)(ReLU()(Conv2D(16, 16, 3, padding=1)(h))))
    h = ReLU()(Add()(h, r))
    down = Conv2D(16, 8, 1, stride=2)(h)
    both = Concatenate()(down, AvgPool2D(3, stride=2, padding=1)(Conv2D(16, 8, 3, padding=1)(h)))
    inner = minicnn.Sequential([Conv2D(16, 16, 3, padding=1), ReLU(), Dropout(0.5)])(both)
    y = Dense(16, 10)(GlobalAvgPool2D()(Add()(both, inner, both)))
    return minicnn.Model(x, y)


@pytest.mark.parametrize("opset", [13, DEFAULT_OPSET, 21])
def test_residual_graph_model_matches(opset, tmp_path):
    onnx = _onnx()
    minicnn.manual_seed(1)
    model = residual_model()
    rng = np.random.default_rng(5)
    for layer in model.layers:
        _randomize(layer, rng)
    export_and_compare(model, tmp_path, opset=opset, batch=4)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == opset
    nodes = [n.name for n in proto.graph.node]
    assert "sequential_1.conv2d_1" in nodes and "add_2.1" in nodes and "add_2" in nodes
    assert "sequential_1.conv2d_1.weight" in {i.name for i in proto.graph.initializer}


def test_preprocessing_from_a_checkpoint(tmp_path):
    """uint8 pixels in: the graph casts and normalises exactly as the training transform."""
    _ort()
    minicnn.manual_seed(0)
    model = zoo.build_model("lenet5")
    saved = minicnn.save(model, tmp_path / "model.npz",
                         transform=Normalize(0.1307, 0.3081).config())
    path = export_onnx(load_checkpoint(saved), tmp_path / "pre.onnx", include_preprocessing=True)
    assert export_onnx(saved, tmp_path / "p.onnx", include_preprocessing=True).read_bytes() == \
        path.read_bytes()                                 # a checkpoint's path works too
    pixels = np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8)
    ref = minicnn_output(model, Normalize(0.1307, 0.3081)(pixels))
    assert_parity(ort_output(path, pixels), ref)
    nodes = [n.op_type for n in _onnx().load(str(path)).graph.node][:3]
    assert nodes == ["Cast", "Mul", "Sub"]
    # a transform object works too; a model that has none, True has nothing to read
    export_onnx(model, tmp_path / "pre2.onnx", include_preprocessing=Normalize(0.1307, 0.3081))
    assert (tmp_path / "pre2.onnx").read_bytes() == path.read_bytes()
    with pytest.raises(ExportError, match="include_preprocessing=True: the Sequential has no "
                                          "input transform"):
        export_onnx(model, tmp_path / "x.onnx", include_preprocessing=True)


# =========================================================================== custom layers

def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_layer_exports_through_its_hook(tmp_path):
    onnx = _onnx()
    custom = load_example("custom_layer")
    minicnn.manual_seed(0)
    model = custom.build_model()
    model.layers[1].s.data[...] = np.array([0.5, -1.0, 2.0, 3.0]).reshape(1, 4, 1, 1)
    export_and_compare(model, tmp_path)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert ("scale_1", "Mul") in [(n.name, n.op_type) for n in proto.graph.node]


class Swish(Layer):
    def forward(self, x):
        return x / (1 + minicnn.backend.get_array_module(x).exp(-x))


def test_a_layer_without_mapping_is_named_in_one_line(tmp_path):
    _onnx()
    model = minicnn.Sequential([Conv2D(1, 2, 3), Swish()], input_shape=(1, 5, 5))
    with pytest.raises(ExportError) as info:
        export_onnx(model, tmp_path / "s.onnx")
    message = str(info.value)
    assert "\n" not in message and "swish_1" in message and "to_onnx" in message
    assert not (tmp_path / "s.onnx").exists()


def test_a_hook_must_return_one_output(tmp_path):
    _onnx()

    class Bad(ReLU):
        def to_onnx(self, ctx, inputs):
            return [inputs[0], inputs[0]]

    with pytest.raises(ExportError, match="bad_1.*must return the name of its one output"):
        export_onnx(minicnn.Sequential([Bad()], input_shape=(2, 3)), tmp_path / "b.onnx")


# =========================================================================== settings, errors

def test_bad_settings(tmp_path):
    _onnx()
    model = minicnn.Sequential([Flatten(), Dense(4, 2)])
    with pytest.raises(ExportError, match="no input_shape"):
        export_onnx(model, tmp_path / "a.onnx")
    export_onnx(model, tmp_path / "a.onnx", input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match="opset must be an int from 13"):
        export_onnx(model, tmp_path / "a.onnx", opset=12, input_shape=(1, 2, 2))
    with pytest.raises(ExportError, match="expected a Sequential, a Model"):
        export_onnx(Dense(4, 2), tmp_path / "a.onnx")


def test_without_onnx_installed_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)          # makes `import onnx` fail
    model = minicnn.Sequential([Dense(4, 2)], input_shape=(4,))
    with pytest.raises(ExportError, match=r'pip install -e "\.\[onnx\]"'):
        export_onnx(model, tmp_path / "a.onnx")
    minicnn.save(model, tmp_path / "m.npz")
    assert cli_main(["export", str(tmp_path / "m.npz"), str(tmp_path / "a.onnx")]) == 1


@pytest.mark.gpu
def test_a_gpu_model_exports_the_same_file(tmp_path):
    """Weights are copied from the device to the host: the file does not depend on where the
    model lives."""
    _onnx()
    minicnn.manual_seed(0)
    model = residual_model()
    host = export_onnx(model, tmp_path / "host.onnx").read_bytes()
    assert export_onnx(model.to("cupy"), tmp_path / "gpu.onnx").read_bytes() == host


def test_import_minicnn_does_not_import_onnx():
    code = "import sys, minicnn; minicnn.export_onnx; print('onnx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


# =========================================================================== command line

def test_cli_export(tmp_path, capsys):
    _ort()
    minicnn.manual_seed(0)
    model = zoo.build_model("ref-cnn")
    minicnn.save(model, tmp_path / "model.npz", transform=Normalize(0.1307, 0.3081).config())
    out = tmp_path / "ref.onnx"
    assert cli_main(["export", str(tmp_path / "model.npz"), str(out), "--opset", "18",
                     "--include-preprocessing"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _onnx().load(str(out)).opset_import[0].version == 18
    pixels = np.random.default_rng(3).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    ref = minicnn_output(load_checkpoint(tmp_path / "model.npz").model,
                         Normalize(0.1307, 0.3081)(pixels))
    assert_parity(ort_output(out, pixels), ref)


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    _onnx()
    assert cli_main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "o.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("minicnn export: error:") and "missing.npz" in err and "\n" not in err
    minicnn.save(minicnn.Sequential([Dense(4, 2)], input_shape=(4,)), tmp_path / "m.npz")
    assert cli_main(["export", str(tmp_path / "m.npz"), str(tmp_path / "o.onnx"),
                     "--opset", "7"]) == 1
    assert "opset must be an int from 13" in capsys.readouterr().err
