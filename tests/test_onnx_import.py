"""import_onnx: minicnn models exported and imported back, hand-built graphs (the patterns
PyTorch's exporter writes) against ONNX Runtime, refusals in one line, and a PyTorch CNN
trained, exported, imported and fine-tuned."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn.layers.merge import Add
from minicnn.onnx.export import export_onnx
from minicnn.onnx.importer import OnnxImportError, import_onnx
from minicnn.training.losses import SoftmaxCrossEntropy
from minicnn.training.optimizers import SGD

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_onnx import random_graph, random_sequential  # noqa: E402

RTOL = 1e-5


def ort_run(path: Path, x: np.ndarray, name: str = "input") -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def infer(model, x: np.ndarray) -> np.ndarray:
    with minicnn.no_grad():
        return minicnn.backend.to_numpy(model.forward(x, training=False))


def save_graph(tmp_path: Path, nodes, x_shape, y_shape, inits=(), opset=17, name="g") -> Path:
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def rand(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# =========================================================================== round trips

@pytest.mark.parametrize("case", range(12))
def test_exported_models_import_back(case, tmp_path):
    """minicnn -> ONNX -> minicnn gives the same outputs; the import exports again to a file
    ONNX Runtime runs with the same outputs."""
    rng = np.random.default_rng(case)
    minicnn.manual_seed(case)
    model = random_graph(rng) if case % 2 else random_sequential(rng)[0]
    first = export_onnx(model, tmp_path / "a.onnx")
    imported = import_onnx(first)
    shape = imported.input_tensor.shape
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    want = infer(model, x)
    np.testing.assert_allclose(infer(imported, x), want, rtol=RTOL, atol=1e-6)
    again = export_onnx(imported, tmp_path / "b.onnx")
    np.testing.assert_allclose(ort_run(again, x), want, rtol=RTOL, atol=1e-6)


def test_imported_model_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(3)
    minicnn.manual_seed(3)
    imported = import_onnx(export_onnx(random_graph(rng), tmp_path / "m.onnx"))
    x = rng.standard_normal((16, *imported.input_tensor.shape)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    path = minicnn.save(imported, tmp_path / "m.npz")
    loaded = minicnn.load(path)
    np.testing.assert_array_equal(infer(loaded, x), infer(imported, x))
    imported.train()
    losses = _fine_tune(imported, x, y, steps=15, lr=0.5)
    assert losses[-1] < losses[0] * 0.95, losses


def _fine_tune(model, x, y, steps: int, lr: float) -> list[float]:
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        logits = model.forward(x, training=True)
        losses.append(float(loss_fn.forward(logits, y)))
        model.backward(loss_fn.backward())
        opt.step()
    return losses


# =========================================================================== hand-built graphs

def test_matmul_add_is_one_dense_and_the_view_chain_folds(tmp_path):
    """PyTorch's x.view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat, Reshape) with a
    symbolic batch, then Linear as MatMul + Add."""
    w, b = rand(2 * 3 * 3, 5, seed=1), rand(5, seed=2)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
            np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(
            np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["y"]),
    ]
    path = save_graph(tmp_path, nodes, ["N", 2, 3, 3], ["N", 5],
                      [("w", w), ("b", b), ("minus1", np.array([-1], np.int64))])
    model = import_onnx(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Flatten", "Dense"]
    x = rand(4, 2, 3, 3)
    np.testing.assert_allclose(infer(model, x), ort_run(path, x, "x"), rtol=RTOL, atol=1e-6)
    np.testing.assert_array_equal(model.layers[1].bias.data, b)


def test_branches_add_concat_softmax_dropout(tmp_path):
    w1, w2 = rand(3, 2, 3, 3, seed=1), rand(3, 2, 1, 1, seed=2)
    gw = rand(6, 6 * 5 * 5, seed=3) * 0.1
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["b"]),
        helper.make_node("LeakyRelu", ["b"], ["b2"], alpha=0.2),
        helper.make_node("Add", ["a", "b2"], ["s"]),
        helper.make_node("Concat", ["s", "a"], ["c"], axis=1),
        helper.make_node("Dropout", ["c"], ["d"]),
        helper.make_node("Flatten", ["d"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "gw"], ["g"], transB=1, alpha=0.5),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1),
    ]
    path = save_graph(tmp_path, nodes, [2, 2, 5, 5], [2, 6], [("w1", w1), ("w2", w2),
                                                              ("gw", gw)])
    model = import_onnx(path)
    assert any(isinstance(layer, Add) for layer in model.layers)
    x = rand(2, 2, 5, 5)
    np.testing.assert_allclose(infer(model, x), ort_run(path, x, "x"), rtol=RTOL, atol=1e-6)


def test_same_upper_padding_and_global_pool(tmp_path):
    w = rand(4, 1, 3, 3)
    mean, var = rand(4, seed=1), np.abs(rand(4, seed=2)) + 0.5
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"],
                         epsilon=1e-3),
        helper.make_node("Sigmoid", ["n"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Tanh", ["p"], ["t"]),
        helper.make_node("GlobalAveragePool", ["t"], ["y"]),
    ]
    path = save_graph(tmp_path, nodes, ["N", 1, 6, 6], ["N", 4, 1, 1],
                      [("w", w), ("g", rand(4, seed=3)), ("b", rand(4, seed=4)),
                       ("m", mean), ("v", var)])
    model = import_onnx(path)
    x = rand(3, 1, 6, 6)
    np.testing.assert_allclose(infer(model, x), ort_run(path, x, "x"), rtol=RTOL, atol=1e-6)


def test_a_graph_of_identity_alone(tmp_path):
    path = save_graph(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], ["N", 3], ["N", 3])
    x = rand(2, 3)
    np.testing.assert_array_equal(infer(import_onnx(path), x), x)


# =========================================================================== refusals

REFUSALS = [
    ("transpose", [helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2], name="t")],
     ["N", 1, 4, 4], "node 't' (Transpose): operator Transpose is not supported"),
    ("groups", [helper.make_node("Conv", ["x", "w"], ["y"], group=3, name="c")],
     ["N", 2, 4, 4], "node 'c' (Conv): "),
    ("asymmetric", [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                     pads=[0, 0, 1, 1], name="p")],
     ["N", 1, 5, 5], "node 'p' (MaxPool): asymmetric pads [0, 0, 1, 1]"),
    ("add_const", [helper.make_node("Add", ["x", "w"], ["y"], name="a")], ["N", 2, 4, 4],
     "node 'a' (Add): adding a constant"),
    ("symbolic", [helper.make_node("Relu", ["x"], ["y"])], ["N", "C", 4, 4],
     "has no fixed size on axis 1"),
    ("bad_reshape", [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")],
     ["N", 2, 4, 4], "node 'r' (Reshape): a reshape"),
]


@pytest.mark.parametrize("name,nodes,shape,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_line_naming_node_and_operator(name, nodes, shape, message, tmp_path):
    inits = [("w", rand(6, 1, 3, 3) if name == "groups" else rand(2, 4, 4)),
             ("shape", np.array([2, -1, 4], np.int64))]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], [numpy_helper.from_array(a, n) for n, a in inits])
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(OnnxImportError) as err:
        import_onnx(path)
    text = str(err.value)
    assert message in text and "\n" not in text and str(path) in text, text


def test_two_inputs_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "z"], ["y"])], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in "xz"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxImportError, match="2 inputs"):
        import_onnx(path)


# =========================================================================== PyTorch

@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # the TorchScript exporter
def test_pytorch_cnn_round_trip_and_fine_tune(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 4:].mean(
        axis=(1, 2)) > 0).astype(np.int64)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    net.eval()
    path = tmp_path / "torch.onnx"
    # dynamo=True (the default) needs onnxscript; the TorchScript exporter keeps BatchNorm
    # apart when constants are not folded into the convolution
    torch.onnx.export(net, torch.from_numpy(x[:2]), str(path), dynamo=False,
                      do_constant_folding=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    model = import_onnx(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten", "Dense"], kinds
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = infer(model, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)
    model.train()
    losses = _fine_tune(model, x, y, steps=10, lr=0.05)
    assert losses[-1] < losses[0], losses


# =========================================================================== command line

def test_command_line_import(tmp_path, capsys):
    from minicnn.cli.commands import main
    rng = np.random.default_rng(5)
    minicnn.manual_seed(5)
    model = random_sequential(rng)[0]
    source = export_onnx(model, tmp_path / "m.onnx")
    assert main(["import", str(source), str(tmp_path / "m.npz")]) == 0
    assert "wrote" in capsys.readouterr().out
    x = rng.standard_normal((2, *model.input_shape)).astype(np.float32)
    np.testing.assert_allclose(infer(minicnn.load(tmp_path / "m.npz"), x), infer(model, x),
                               rtol=RTOL, atol=1e-6)
    (tmp_path / "bad.onnx").write_bytes(source.read_bytes()[:200])
    for argv in (["import", str(tmp_path / "bad.onnx"), str(tmp_path / "b.npz")],
                 ["import", str(tmp_path / "missing.onnx"), str(tmp_path / "b.npz")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("minicnn import: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "b.npz").exists()


# =========================================================================== later layers

def test_later_layers_against_onnxruntime(tmp_path):
    """Pad, Conv with asymmetric pads (a ZeroPad2D before it), PRelu, Clip(0, 6), Elu,
    HardSwish, Resize (bilinear, nearest), GroupNormalization, LayerNormalization,
    GlobalMaxPool, Softplus, Gemm, BatchNormalization of (N, C), LogSoftmax."""
    c = 3
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["c"], pads=[1, 0, 0, 2], strides=[2, 1]),
        helper.make_node("PRelu", ["c", "slope"], ["r"]),
        helper.make_node("Clip", ["r", "zero", "six"], ["r6"]),
        helper.make_node("Elu", ["r6"], ["e"], alpha=0.7),
        helper.make_node("HardSwish", ["e"], ["h"]),
        helper.make_node("Resize", ["h", "", "scales"], ["u"], mode="linear"),
        helper.make_node("Resize", ["u", "", "scales"], ["u2"], mode="nearest"),
        helper.make_node("GroupNormalization", ["u2", "gs", "gb"], ["g"], num_groups=1,
                         epsilon=1e-4),
        helper.make_node("LayerNormalization", ["g", "ls", "lb"], ["l"], axis=-2),
        helper.make_node("GlobalMaxPool", ["l"], ["m"]),
        helper.make_node("Softplus", ["m"], ["s"]),
        helper.make_node("Flatten", ["s"], ["f"]),
        helper.make_node("Gemm", ["f", "dw", "db"], ["d"]),
        helper.make_node("BatchNormalization", ["d", "bs", "bb", "bm", "bv"], ["n"]),
        helper.make_node("LogSoftmax", ["n"], ["y"], axis=1),
    ]
    inits = [("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)),
             ("w", rand(c, 2, 3, 3, seed=1)), ("slope", rand(c, 1, 1, seed=2)),
             ("zero", np.array(0, np.float32)), ("six", np.array(6, np.float32)),
             ("scales", np.array([1, 1, 2, 2], np.float32)),
             ("gs", rand(c, seed=3)), ("gb", rand(c, seed=4)),
             ("ls", rand(12, 24, seed=5)), ("lb", rand(12, 24, seed=6)),
             ("dw", rand(c, 4, seed=7)), ("db", rand(4, seed=8)),
             ("bs", rand(4, seed=9)), ("bb", rand(4, seed=10)), ("bm", rand(4, seed=11)),
             ("bv", np.abs(rand(4, seed=12)) + 0.5)]
    path = save_graph(tmp_path, nodes, ["N", 2, 5, 5], ["N", 4], inits, opset=21)
    model = import_onnx(path)
    x = rand(3, 2, 5, 5)
    np.testing.assert_allclose(infer(model, x), ort_run(path, x, "x"), rtol=RTOL, atol=1e-5)
    again = export_onnx(model, tmp_path / "again.onnx")
    np.testing.assert_allclose(ort_run(again, x), ort_run(path, x, "x"), rtol=RTOL, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # the TorchScript exporter
def test_pytorch_silu_and_conv_transpose(tmp_path):
    """PyTorch writes SiLU as x * Sigmoid(x): imported as one SiLU layer."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.SiLU(),
                              torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1,
                                                       output_padding=1),
                              torch.nn.Hardswish(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 8 * 8, 3), torch.nn.LogSoftmax(dim=1)).eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    path = tmp_path / "t.onnx"
    torch.onnx.export(net, torch.from_numpy(x), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "N"}})
    model = import_onnx(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "SiLU", "ConvTranspose2D", "Hardswish", "Flatten", "Dense",
                     "LogSoftmax"], kinds
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(infer(model, x), want, rtol=RTOL, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # the TorchScript exporter
def test_pytorch_gelu_pattern(tmp_path):
    """Before opset 20 PyTorch writes GELU as Div, Erf, Add, Mul, Mul: imported as one GELU."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.GELU(), torch.nn.Linear(6, 2))
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    path = tmp_path / "gelu.onnx"
    torch.onnx.export(net.eval(), torch.from_numpy(x), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    assert "Erf" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = import_onnx(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "GELU", "Dense"]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(infer(model, x), want, rtol=RTOL, atol=1e-6)
