"""Tests of the bench on every zoo model: each one's PyTorch twin computes the same step, the
per-layer breakdown walks graphs, and the roofline's FLOP count is the definition's."""
from __future__ import annotations

import json

import numpy as np
import pytest

import minicnn
from minicnn import zoo
from minicnn.core import modes
from minicnn.layers import Conv2D, Dense, Flatten, LayerNorm, ReLU
from minicnn.layers.conv_transpose import ConvTranspose2D
from minicnn.models import Sequential
from minicnn.tools.bench import command, roofline, runners, timing, torch_layers, torch_twin

ZOO = ["ref-cnn", "lenet5", "resnet", "mobilenet", "vgg", "autoencoder"]


def _model(name):
    minicnn.manual_seed(3)
    return zoo.build_model(name, **({"dropout": 0.0} if name == "vgg" else {}))  # same masks


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_has_a_torch_twin_computing_the_same_steps(name):
    """float64: the same output, and the same weights and BatchNorm statistics after two SGD
    steps (cross-entropy on labels; BCE-with-logits on target images for the autoencoder)."""
    torch = pytest.importorskip("torch")
    model = _model(name).astype(np.float64)
    image_targets = runners.image_to_image(model)
    assert image_targets == (name == "autoencoder")
    x, y = runners.make_batch(12, seed=1, images=image_targets)
    x, y = x.astype(np.float64), (y.astype(np.float64) if image_targets else y)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours = runners.MinicnnRunner(model, x, y, x)
        theirs = torch_twin.TorchRunner(torch, model, "cpu", x, y, x)
        np.testing.assert_allclose(ours.infer(), theirs.infer().numpy(), rtol=1e-10, atol=1e-12)
        for _ in range(2):
            ours.train_step()
            theirs.train_step()
        trained = torch_layers.torch_model_from(model, torch).state_dict()
    finally:
        torch.set_default_dtype(previous)
    compared = 0
    for key, value in theirs.net.state_dict().items():
        if value.dtype.is_floating_point:
            scale = max(1.0, float(value.abs().max()))
            np.testing.assert_allclose(trained[key].numpy(), value.numpy(), rtol=0,
                                       atol=1e-10 * scale, err_msg=key)
            compared += 1
    assert compared >= len(list(model.parameters()))
    np.testing.assert_allclose(ours.infer(), theirs.infer().numpy(), rtol=1e-9, atol=1e-12)


def test_a_layer_with_no_twin_is_refused_in_one_line():
    torch = pytest.importorskip("torch")
    model = Sequential([Flatten(), LayerNorm(4)], input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match=r"no PyTorch equivalent for .*LayerNorm"):
        torch_layers.torch_model_from(model, torch)


@pytest.mark.parametrize("name", ["resnet", "ref-cnn"])
def test_graph_nodes_replay_the_model(name):
    """Running the nodes on the outputs they read gives the model's own output."""
    model = _model(name)
    x, _ = runners.make_batch(4, seed=2)
    layers, reads = timing.graph_nodes(model)
    assert len(layers) == len(model.layers)
    values = []
    with modes.no_grad(), modes.training_mode(False):
        for layer, parents in zip(layers, reads):
            values.append(layer.forward(*(x if j < 0 else values[j] for j in parents)))
        np.testing.assert_array_equal(values[-1], model.forward(x, training=False))
    assert any(len(parents) == 2 for parents in reads) == (name == "resnet")   # the Add


def test_layer_breakdown_times_every_node_of_a_graph():
    model = _model("resnet")
    x, y = runners.make_batch(8, seed=1)
    runner = runners.MinicnnRunner(model, x, y)
    rows = timing.layer_breakdown(runner, 1)
    assert [r["name"] for r in rows] == [layer.name for layer in model.layers] + ["loss",
                                                                                  "optimizer"]
    assert all(r["backward_ms"] > 0 for r in rows[:-2]) and rows[-2]["type"] == \
        "SoftmaxCrossEntropy"
    runner.train_step()                     # the model still trains after being timed


def test_step_flops_count_the_definition():
    """2 FLOPs per multiply-add: a convolution does (outputs) x (C_in / groups) x kh x kw, a
    transposed one (inputs) x (C_out / groups) x kh x kw, Dense in x out; the step adds the
    weight gradient and, except for the first layer, the input gradient, as many again each."""
    model = Sequential([Conv2D(3, 8, 3, padding=1), ReLU(),              # (8, 10, 10)
                        Conv2D(8, 4, 3, stride=2, groups=2),             # (4, 4, 4)
                        ConvTranspose2D(4, 2, 2, stride=2),              # (2, 8, 8)
                        Flatten(), Dense(128, 5)], input_shape=(3, 10, 10))
    conv1, conv2, up, dense = 800 * 27, 64 * 36, 64 * 2 * 4, 128 * 5
    flops = roofline.step_flops(model, (3, 10, 10), batch_size=7)
    assert flops["forward"] == 2 * 7 * (conv1 + conv2 + up + dense)
    assert flops["step"] == 2 * 7 * (2 * conv1 + 3 * (conv2 + up + dense))


def test_step_flops_of_the_reference_cnn():
    """The issue's figure: about 3.2 GFLOP per step at batch 128, 1.09 GFLOP forward."""
    flops = roofline.step_flops(runners.bench_model("ref-cnn"), (1, 28, 28), 128)
    conv1, conv2 = 32 * 28 * 28 * 9, 64 * 14 * 14 * 32 * 9
    dense = 64 * 7 * 7 * 128 + 128 * 10
    assert flops["forward"] == 2 * 128 * (conv1 + conv2 + dense)


def test_matmul_peak_and_roofline_line():
    peak = roofline.matmul_peak(np, n=64, reps=2)
    assert peak > 0
    line = roofline.roofline_line({"forward": 1e9, "step": 3e9}, 0.1, 60e9)
    assert "3 GFLOP per training step" in line and "30.0 GFLOP/s achieved" in line
    assert "60.0 GFLOP/s" in line and "50% of it" in line


def test_width_mult_is_for_the_reference_cnn_only(capsys):
    assert command.main(["--model", "resnet", "--width-mult", "2"]) == 2
    assert "--width-mult applies to ref-cnn only, not resnet" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "autoencoder"])
def test_bench_a_zoo_model_against_its_twin(name, tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    assert command.main(["--steps", "1", "--warmup", "1", "--batch-size", "8",
                         "--infer-batch-size", "8", "--infer-steps", "1", "--model", name,
                         "--compare", "torch", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"minicnn bench: {name} (" in out and "minicnn/PyTorch" in out
    assert "GFLOP per training step" in out

    res = json.loads(path.read_text())["results"]["numpy"]
    assert res["ratio"]["fit step"]["step_s_median"] > 0
    loss = "BCEWithLogits" if name == "autoencoder" else "SoftmaxCrossEntropy"
    assert res["layers"][-2]["type"] == loss
