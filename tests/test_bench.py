"""Tests of minicnn.tools.bench: the report and JSON with tiny settings (no timing assertions),
the PyTorch comparison, that the PyTorch model is the same model as minicnn's, and that the
benchmark leaves the model as it was."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest

import minicnn
from minicnn import zoo
from minicnn.core import backend
from minicnn.layers.base import Layer
from minicnn.tools.bench import command, runners, timing, torch_twin
from minicnn.tools.bench import report as bench_report
from minicnn.training import parallel

TINY = ["--steps", "2", "--warmup", "1", "--batch-size", "8", "--infer-batch-size", "16",
        "--infer-steps", "1"]
FIGURE_KEYS = ("step_s_median", "epoch_s", "train_img_s", "infer_s_median", "infer_img_s",
               "train_peak_rss_mib", "train_rss_increase_mib", "infer_peak_rss_mib",
               "infer_rss_increase_mib")
LAYERS = ["conv2d_1", "relu_1", "maxpool2d_1", "conv2d_2", "relu_2", "maxpool2d_2", "flatten_1",
          "dense_1", "dense_2", "loss", "optimizer"]


def _run(tmp_path, *extra):
    path = tmp_path / "bench.json"
    assert command.main(TINY + ["--json", str(path), *extra]) == 0
    return json.loads(path.read_text())


@pytest.mark.slow
def test_report_and_json_minicnn_alone_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch raises ImportError
    report = _run(tmp_path, "--compare", "torch")
    out = capsys.readouterr().out
    assert "PyTorch is not installed here: reporting minicnn alone." in out
    for row in ("time per step (s, median)", "time per epoch (s, extrapolated)",
                "training images/s", "inference images/s", "peak RSS, training (MiB)",
                "peak RSS, inference (MiB)", "conv2d_1 (Conv2D)", "dense_2 (Dense)",
                "sum of the above", "minicnn numpy"):
        assert row in out
    assert "PyTorch cpu" not in out
    assert report["compare"] is None and report["speedup"] is None
    assert report["config"]["batch_size"] == 8 and report["config"]["params"] == 421_642
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["numpy"] == np.__version__
    res = report["results"]["numpy"]
    assert set(res) == {"minicnn", "minicnn_hand_loop", "hand_loop_vs_fit_step", "layers"}
    figures = res["minicnn"]
    for key in FIGURE_KEYS:
        assert figures[key] > 0, key
    assert figures["steps_per_epoch"] == 7500 and len(figures["step_s"]) == 2
    hand = res["minicnn_hand_loop"]
    assert len(hand["step_s"]) == 2 and hand["train_img_s"] > 0 and "infer_img_s" not in hand
    assert res["hand_loop_vs_fit_step"]["step_s_median"] == pytest.approx(
        hand["step_s_median"] / figures["step_s_median"])
    assert "hand loop numpy" in out and "minicnn numpy: hand loop / fit step = " in out
    assert report["config"]["steps_timed"]["minicnn_hand_loop"] == runners.HAND_LOOP
    assert [row["name"] for row in res["layers"]] == LAYERS
    assert all(row["total_ms"] > 0 for row in res["layers"])
    assert backend.get_backend() == "numpy"


@pytest.mark.slow
def test_compare_torch_reports_ratios(tmp_path, capsys):
    pytest.importorskip("torch")
    report = _run(tmp_path, "--compare", "torch", "--width-mult", "2")
    out = capsys.readouterr().out
    assert "PyTorch cpu" in out and "minicnn/PyTorch" in out and "conv channels 64/128" in out
    res = report["results"]["numpy"]
    assert res["torch"]["device"] == "cpu" and res["torch"]["threads"] >= 1
    for key in FIGURE_KEYS:
        assert res["torch"][key] > 0, key
    assert "hand loop/PyTorch" in out
    for key in command.RATIO_KEYS[:8]:
        assert res["ratio"]["fit step"][key] > 0, key
    assert set(res["ratio"]["hand loop"]) == set(command.TRAIN_KEYS)
    for runner, ratio in (("minicnn", "fit step"), ("minicnn_hand_loop", "hand loop")):
        assert res["ratio"][ratio]["step_s_median"] == pytest.approx(
            res[runner]["step_s_median"] / res["torch"]["step_s_median"])
    assert report["machine"]["torch"]


def test_torch_model_is_the_same_model():
    torch = pytest.importorskip("torch")
    minicnn.manual_seed(3)
    model = zoo.build_model("ref-cnn")
    x, y = runners.make_batch(16, seed=1)
    ours = runners.MinicnnRunner(model, x, y, x)
    theirs = torch_twin.TorchRunner(torch, model, "cpu", x, y, x)
    np.testing.assert_allclose(ours.infer(), theirs.infer().numpy(), rtol=1e-4, atol=1e-4)
    for _ in range(2):                    # same SGD (momentum, weight decay) and loss
        ours.train_step()
        theirs.train_step()
    trained = torch_twin.torch_model_from(model, torch).state_dict()
    for name, value in theirs.net.state_dict().items():
        np.testing.assert_allclose(trained[name].numpy(), value.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(ours.infer(), theirs.infer().numpy(), rtol=1e-4, atol=1e-4)


def test_hand_loop_computes_what_fit_step_computes():
    """The README's loop and fit's step give the same parameters after the same steps."""
    x, y = runners.make_batch(32, seed=2)
    trained = []
    for runner_class in (runners.MinicnnRunner, runners.HandLoopRunner):
        minicnn.manual_seed(5)
        runner = runner_class(zoo.build_model("ref-cnn"), x, y)
        for _ in range(2):
            runner.train_step()
        trained.append([p.data.copy() for p in runner.model.parameters()])
    for fit_param, hand_param in zip(*trained):
        np.testing.assert_allclose(hand_param, fit_param, rtol=1e-5, atol=1e-6)


def _state(model):
    """The model's and its layers' attributes: names, and values of the plain ones (transient
    saved values and workspaces left out)."""
    def plain(obj):
        return {k: v if isinstance(v, (bool, int, float, str, tuple, type(None))) else type(v)
                for k, v in obj.__dict__.items() if k not in ("_saved", "_workspace", "_replicas")}
    return [plain(model)] + [plain(layer) for layer in model.layers]


@pytest.mark.parametrize("workers", [None, "1", "2"])
def test_layer_breakdown_leaves_the_model_as_it_was(workers, monkeypatch):
    if workers is not None:
        monkeypatch.setenv("MINICNN_WORKERS", workers)
    minicnn.manual_seed(4)
    model = zoo.build_model("ref-cnn")
    x, y = runners.make_batch(2 * parallel.MIN_SLICE + 3, seed=1)
    runner = runners.MinicnnRunner(model, x, y)
    runner.train_step()
    before = _state(model)
    calls, backward_step = [], Layer.backward_step

    def recording(layer, grad, input_grad=True):
        calls.append((model.layers.index(layer), input_grad))
        return backward_step(layer, grad, input_grad)

    monkeypatch.setattr(Layer, "backward_step", recording)
    rows = timing.layer_breakdown(runner, reps=2)
    monkeypatch.undo()
    assert [row["name"] for row in rows] == LAYERS
    n = len(model.layers)
    assert calls == [(i, i > 0) for i in reversed(range(n))] * 2     # as Sequential calls them
    assert _state(model) == before
    runner.train_step()                   # the model still trains as before


def test_cupy_without_a_gpu_is_one_clear_line(capsys):
    try:
        backend.get_module("cupy")
    except minicnn.BackendError:
        pass
    else:
        pytest.skip("a GPU is available here")
    assert command.main(TINY + ["--backend", "numpy", "--backend", "cupy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minicnn bench: backend 'cupy'")
    assert backend.get_backend() == "numpy"


def test_backend_options_and_cli_wiring(capsys):
    parser = argparse.ArgumentParser(prog="minicnn")
    command.add_arguments(parser.add_subparsers(dest="command").add_parser("bench"))
    args = parser.parse_args(["bench", "--backend", "numpy", "--backends", "numpy,cupy"])
    assert command._backend_list(args) == ["numpy", "cupy"]
    assert (args.steps, args.warmup, args.batch_size, args.width_mult) == (20, 3, 128, 1)
    assert command._backend_list(parser.parse_args(["bench"])) == ["numpy"]
    assert command.run(parser.parse_args(["bench", "--backends", "numpy,tpu"])) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err


def test_report_with_numpy_and_cupy_shows_the_gpu_speedup():
    """The two-backend table, from made-up figures (no GPU needed)."""
    def figures(step, infer, pool=None):
        f = {"step_s_median": step, "epoch_s": 469 * step, "train_img_s": 128 / step,
             "infer_img_s": 1000 / infer, "train_peak_rss_mib": 100.0,
             "train_rss_increase_mib": 50.0, "infer_peak_rss_mib": 200.0,
             "infer_rss_increase_mib": 150.0}
        if pool:
            f.update(train_gpu_pool_mib=pool, infer_gpu_pool_mib=2 * pool)
        return f
    layers = [{"name": "conv2d_1", "type": "Conv2D", "forward_ms": 1.0, "backward_ms": 2.0,
               "total_ms": 3.0}]
    results = {"numpy": {"minicnn": figures(0.08, 0.5), "layers": layers},
               "cupy": {"minicnn": figures(0.004, 0.01, pool=64.0), "layers": layers}}
    report = {"config": {"model": "ref-cnn", "width_mult": 1, "params": 421_642,
                         "batch_size": 128, "steps": 20, "warmup": 3, "infer_batch_size": 1000,
                         "infer_steps": 5, "seed": 0, "pause_s": 0.2, "data": runners.DATA_NOTE},
              "machine": {"cpu_model": "CPU", "cpu_count": 8, "python": "3.11", "numpy": "2",
                          "numpy_blas": None, "minicnn": "0.1.0", "cupy": "13", "gpu": "GPU"},
              "results": results, "compare": None,
              "speedup": {"minicnn": command._speedup(results["numpy"]["minicnn"],
                                                    results["cupy"]["minicnn"])}}
    text = bench_report.format_report(report)
    assert "minicnn numpy" in text and "minicnn cupy" in text and "minicnn cupy speedup" in text
    step_row = next(line for line in text.splitlines() if line.startswith("| time per step"))
    assert step_row.rstrip(" |").endswith("20.00x")
    assert "GPU pool peak, training (MiB)" in text and "cupy 13 on GPU" in text
    assert report["speedup"]["minicnn"]["infer_img_s"] == pytest.approx(50.0)
