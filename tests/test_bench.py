"""Tests of minicnn.tools.bench: the report and JSON with tiny settings (no timing assertions),
the PyTorch comparison, that the PyTorch model is the same model as minicnn's, and that the
benchmark leaves the model as it was."""
from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import minicnn
from minicnn import zoo
from minicnn.core import backend
from minicnn.layers.base import Layer
from minicnn.tools.bench import command, layer_cases, roofline, runners, sweep, timing, torch_twin
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
    """The bench's JSON for TINY settings and ``extra``; it leaves the global backend as it was
    (numpy, or cupy under MINICNN_BACKEND=cupy)."""
    path, before = tmp_path / "bench.json", backend.get_backend()
    assert command.main(TINY + ["--json", str(path), *extra]) == 0
    assert backend.get_backend() == before
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
    assert set(res) == {"minicnn", "minicnn_hand_loop", "hand_loop_vs_fit_step", "layers",
                        "roofline"}
    assert res["roofline"]["step_flops"] == roofline.step_flops(
        runners.bench_model("ref-cnn"), (1, 28, 28), 8)["step"]
    assert "GFLOP per training step" in out and res["roofline"]["matmul_peak_flop_s"] > 0
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


def _no_gpu(monkeypatch):
    """CuPy cannot run, whatever this machine has (the reason a machine without a GPU gives);
    the global backend is numpy meanwhile."""
    backend.get_backend()                     # MINICNN_BACKEND applied, then set aside
    monkeypatch.setattr(backend, "name", "numpy")
    monkeypatch.setattr(backend, "xp", np)

    def no_cupy():
        raise minicnn.BackendError("backend 'cupy': CuPy is installed but no GPU is visible "
                                   "(made up by the test); use --backend numpy")
    monkeypatch.setattr(backend, "_import_cupy", no_cupy)


def test_cupy_alone_without_a_gpu_is_one_clear_line(capsys, monkeypatch):
    _no_gpu(monkeypatch)
    assert command.main(TINY + ["--backend", "cupy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minicnn bench: backend 'cupy'")
    assert backend.get_backend() == "numpy"


@pytest.mark.slow
def test_numpy_and_cupy_without_a_gpu_measures_numpy_and_says_why_not_cupy(
        tmp_path, capsys, monkeypatch):
    """What it can (NumPy, and PyTorch when installed) runs; the GPU column reads n/a."""
    _no_gpu(monkeypatch)
    report = _run(tmp_path, "--backends", "numpy,cupy", "--compare", "torch")
    out = capsys.readouterr().out
    reason = report["unavailable"]["cupy"]
    assert reason.startswith("backend 'cupy': CuPy is installed but no GPU is visible")
    assert report["config"]["backends"] == ["numpy", "cupy"]
    assert report["config"]["backends_measured"] == ["numpy"]
    assert set(report["results"]) == {"numpy"} and report["speedup"] is None
    assert report["results"]["numpy"]["minicnn"]["step_s_median"] > 0
    if report["compare"] == "torch":
        assert report["results"]["numpy"]["torch"]["step_s_median"] > 0
    step_row = next(line for line in out.splitlines() if line.startswith("| time per step"))
    header = next(line for line in out.splitlines() if line.startswith("| figure"))
    assert header.rstrip(" |").endswith("minicnn cupy") and step_row.rstrip(" |").endswith("n/a")
    assert f"minicnn cupy: not measured (n/a): {reason}" in out


def test_report_with_an_unavailable_backend():
    """A backend that could not run is a column of n/a with its reason (made-up figures)."""
    figures = {"step_s_median": 0.05, "epoch_s": 23.0, "train_img_s": 2560.0}
    layers = [{"name": "conv2d_1", "type": "Conv2D", "forward_ms": 1.0, "backward_ms": 2.0,
               "total_ms": 3.0}]
    report = {"config": {"model": "ref-cnn", "width_mult": 1, "params": 1, "batch_size": 128,
                         "steps": 2, "warmup": 1, "infer_batch_size": 10, "infer_steps": 1,
                         "seed": 0, "pause_s": 0.2, "data": "d", "backends": ["numpy", "cupy"]},
              "machine": {"cpu_model": "CPU", "cpu_count": 2, "python": "3", "numpy": "2",
                          "numpy_blas": None, "minicnn": "0"},
              "results": {"numpy": {"minicnn": figures, "layers": layers}}, "compare": None,
              "unavailable": {"cupy": "no GPU here"}, "speedup": None}
    lines = bench_report.format_report(report).splitlines()
    header = next(line for line in lines if line.startswith("| figure"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "figure", "minicnn numpy", "minicnn cupy"]
    rows = [line for line in lines if line.startswith("| t")]
    assert rows and all(row.rstrip(" |").endswith("n/a") for row in rows)
    assert "minicnn cupy: not measured (n/a): no GPU here" in lines


def test_torch_cuda_settings_turn_tf32_off_and_cudnn_benchmark_on():
    ns = SimpleNamespace
    torch = ns(backends=ns(cuda=ns(matmul=ns(allow_tf32=True, fp32_precision="tf32")),
                           cudnn=ns(allow_tf32=True, benchmark=False,
                                    conv=ns(fp32_precision="tf32"))))
    settings = torch_twin.cuda_settings(torch)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark) == (False, False, True)
    assert settings == {"torch.backends.cuda.matmul.allow_tf32": False,
                        "torch.backends.cudnn.allow_tf32": False,
                        "torch.backends.cudnn.benchmark": True,
                        "torch.backends.cuda.matmul.fp32_precision": "tf32",
                        "torch.backends.cudnn.conv.fp32_precision": "tf32"}


def test_backend_options_and_cli_wiring(capsys):
    parser = argparse.ArgumentParser(prog="minicnn")
    command.add_arguments(parser.add_subparsers(dest="command").add_parser("bench"))
    args = parser.parse_args(["bench", "--backend", "numpy", "--backends", "numpy,cupy"])
    assert command._backend_list(args) == ["numpy", "cupy"]
    assert (args.steps, args.warmup, args.batch_size, args.width_mult) == (20, 3, 128, 1)
    assert command._backend_list(parser.parse_args(["bench"])) == ["numpy"]
    assert command.run(parser.parse_args(["bench", "--backends", "numpy,tpu"])) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err
    args = parser.parse_args(["bench", "--sweep", "batch=1,8", "--compare", "torch"])
    assert args.sweep == "batch=1,8" and command.run(args) == 2
    assert "--sweep times minicnn alone: drop --compare" in capsys.readouterr().err
    assert command.run(parser.parse_args(["bench", "--sweep", "size=1,8"])) == 2
    assert "expected batch=B1,B2,..." in capsys.readouterr().err


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


# --- the batch-size sweep (--sweep) --------------------------------------------------------------
def test_parse_sweep():
    assert sweep.parse_sweep("batch=32,1,8,8") == [1, 8, 32]
    assert sweep.parse_sweep(" batch = 512 ") == [512]
    for bad in ("size=1,8", "batch", "batch=", "batch=0,8", "batch=a,8", "batch=1.5"):
        with pytest.raises(ValueError, match="--sweep"):
            sweep.parse_sweep(bad)


def test_crossover_on_made_up_figures():
    numpy = {1: 1.0, 8: 2.0, 32: 4.0, 128: 10.0, 512: 40.0}
    assert sweep.crossover(numpy, {1: 5.0, 8: 5.0, 32: 5.0, 128: 5.0, 512: 5.0}) == 128
    assert sweep.crossover(numpy, {1: 0.5, 8: 1.0, 32: 1.0, 128: 1.0, 512: 1.0}) == 1
    assert sweep.crossover(numpy, {1: 0.5, 8: 3.0, 32: 1.0, 128: 1.0, 512: 1.0}) == 32
    assert sweep.crossover(numpy, {b: 2 * t for b, t in numpy.items()}) is None
    assert sweep.crossover(numpy, {1: 0.5, 8: 1.0, 32: 1.0, 128: 1.0, 512: 40.0}) is None  # tie
    assert sweep.crossover(numpy, {8: 1.0, 32: 1.0, 64: 0.1}) == 8    # batches both have


def _made_up(steps):
    return {"batches": [{"batch_size": b, "step_s_median": t, "train_img_s": b / t}
                        for b, t in steps.items()]}


def test_crossover_line_on_made_up_figures():
    cpu = _made_up({1: 1.0, 8: 2.0, 32: 4.0})
    line = sweep.crossover_line
    assert line({"numpy": cpu, "cupy": _made_up({1: 3.0, 8: 1.0, 32: 1.0})}, {}) == \
        "CuPy is faster than NumPy from batch 8"
    assert line({"numpy": cpu, "cupy": _made_up({1: 3.0, 8: 3.0, 32: 5.0})}, {}) == \
        "CuPy is faster than NumPy at no batch tried"
    assert line({"numpy": cpu, "cupy": _made_up({1: 0.5, 8: 3.0, 32: 5.0})}, {}) == \
        "CuPy is faster than NumPy at batch 1 only, not at the largest batch tried (32)"
    assert line({"numpy": cpu}, {"cupy": "no GPU here"}) == "CuPy was not measured: no GPU here"
    assert line({"numpy": cpu}, {}).startswith("CuPy was not measured: not requested")
    assert line({"cupy": cpu}, {}).startswith("NumPy was not measured: not requested")


class _FakeEvent:
    """cupy.cuda.Event's record/synchronize, recording the order of calls."""

    def __init__(self, calls):
        self.calls, self.recorded = calls, False

    def record(self):
        self.recorded = True
        self.calls.append("record")

    def synchronize(self):
        assert self.recorded
        self.calls.append("synchronize")


def test_event_timer_splits_each_layer_into_host_and_device_time():
    """The CuPy split on NumPy arrays, with stand-in CUDA events that always say 2.5 ms."""
    calls = []

    def elapsed(start, end):
        assert start.recorded and end.recorded and calls[-1] == "synchronize"
        return 2.5
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(Event=lambda: _FakeEvent(calls),
                                                     get_elapsed_time=elapsed))
    minicnn.manual_seed(0)
    x, y = runners.make_batch(4, seed=1)
    runner = runners.MinicnnRunner(zoo.build_model("ref-cnn"), x, y)
    rows = timing.layer_breakdown(runner, reps=2, timer=sweep.EventTimer(fake_cupy))
    assert [row["name"] for row in rows] == LAYERS
    for row in rows[:-2]:
        assert row["forward_device_ms"] == row["backward_device_ms"] == 2.5
        assert row["total_device_ms"] == 5.0 and row["total_host_ms"] > 0
        assert "total_ms" not in row
    assert rows[-2]["forward_device_ms"] == 2.5 and rows[-2]["backward_device_ms"] == 0.0
    assert rows[-1]["backward_device_ms"] == 5.0       # zero_grad + step
    assert calls[:3] == ["record", "record", "synchronize"]


def test_sweep_on_numpy_reports_steps_layers_and_the_crossover_line(tmp_path, capsys):
    path = tmp_path / "sweep.json"
    argv = ["--sweep", "batch=4,1", "--steps", "1", "--warmup", "0", "--json", str(path)]
    before = backend.get_backend()
    assert command.main(argv) == 0 and backend.get_backend() == before
    out, report = capsys.readouterr().out, json.loads(path.read_text())
    swept = report["sweep"]
    assert swept["batch_sizes"] == [1, 4] and swept["crossover_batch"] is None
    assert swept["crossover"].startswith("CuPy was not measured: not requested")
    result = swept["results"]["numpy"]
    assert result["layer_split"] == sweep.NOT_APPLICABLE
    assert [row["batch_size"] for row in result["batches"]] == [1, 4]
    for row in result["batches"]:
        assert row["step_s_median"] > 0 and len(row["step_s"]) == 1
        assert row["train_img_s"] == pytest.approx(row["batch_size"] / row["step_s_median"])
        assert [layer["name"] for layer in row["layers"]] == LAYERS
        assert all(layer["total_ms"] > 0 and "total_host_ms" not in layer
                   for layer in row["layers"][:1])
    for text in ("sweep over batch sizes 1, 4", "| batch | step ms (median) |",
                 swept["crossover"], sweep.NOT_APPLICABLE, "| conv2d_1 (Conv2D) "):
        assert text in out
    assert "results" not in report


def test_sweep_report_with_both_backends_on_made_up_figures():
    def result(step, split):
        kinds = ("host_ms", "device_ms") if split else ("ms",)
        layer = {"name": "conv2d_1", "type": "Conv2D",
                 **{f"total_{k}": 0.25 * (i + 1) for i, k in enumerate(kinds)}}
        return {"batches": [{"batch_size": b, "step_s_median": t, "train_img_s": b / t,
                             "layers": [layer]} for b, t in step.items()],
                "layer_split": sweep.SPLIT if split else sweep.NOT_APPLICABLE}
    results = {"numpy": result({8: 0.01, 128: 0.1}, False),
               "cupy": result({8: 0.02, 128: 0.002}, True)}
    text = sweep.format_sweep({"results": results, "unavailable": {},
                               "crossover": sweep.crossover_line(results, {})})
    lines = text.splitlines()
    assert "CuPy is faster than NumPy from batch 128" in lines
    headers = [line for line in lines if line.startswith("| layer")]
    assert [c.strip() for c in headers[0].strip("|").split("|")] == ["layer", "b=8 ms", "b=128 ms"]
    assert [c.strip() for c in headers[1].strip("|").split("|")] == [
        "layer", "b=8 host", "b=8 device", "b=128 host", "b=128 device"]
    assert "| conv2d_1 (Conv2D) |    0.250 |      0.500 |      0.250 |        0.500 |" in lines
    assert sweep.SPLIT in text and sweep.NOT_APPLICABLE in text
    assert "| 128   |            2.000 |            64,000 |" in lines


# =========================================================================== --layers

SMALL_CASES = (
    layer_cases.LayerCase("conv", "minicnn.layers.conv", "Conv2D", (2, 3, 3), (4, 2, 6, 6),
                          lambda F, x, p: F.conv2d(x, p["weight"], p["bias"], padding=1),
                          {"padding": 1}),
    layer_cases.LayerCase("pool", "minicnn.layers.pooling", "MaxPool2D", (2,), (4, 2, 6, 6),
                          lambda F, x, p: F.max_pool2d(x, 2)),
    layer_cases.LayerCase("missing", "minicnn.layers.pooling", "NoSuchPool2D", (2,),
                          (4, 2, 6, 6), lambda F, x, p: x),
)


@pytest.mark.parametrize("torch_too", [False, True], ids=["alone", "torch"])
def test_layers_report_times_each_case_and_says_why_one_is_missing(
        tmp_path, capsys, monkeypatch, torch_too):
    if torch_too:
        pytest.importorskip("torch")
    else:
        monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(layer_cases, "CASES", SMALL_CASES)
    report = _run(tmp_path, "--layers", "--compare", "torch")
    out = capsys.readouterr().out
    cases = report["layers"][backend.get_backend()]
    assert set(cases) == {"conv", "pool", "missing"}
    assert "NoSuchPool2D" in cases["missing"]["unavailable"]
    assert "missing: not measured: AttributeError" in out
    for name in ("conv", "pool"):
        figures = cases[name]
        assert figures["minicnn_step_ms"] > 0 and figures["minicnn_forward_ms"] > 0
        assert ("step_ratio" in figures) == torch_too
        if torch_too:
            assert figures["step_ratio"] == pytest.approx(
                figures["minicnn_step_ms"] / figures["torch_step_ms"])
            assert figures["meets_target"] == (figures["step_ratio"] <= figures["target"])


def test_layer_runners_compute_the_same_step():
    """The two sides of a case compute the same output and input gradient."""
    torch = pytest.importorskip("torch")
    from minicnn.tools.bench import layers as bench_layers
    case = SMALL_CASES[0]
    mine = bench_layers.LayerRunner(case, seed=3)
    theirs = bench_layers.TorchLayerRunner(torch, case, mine, "cpu")
    y = mine.model.forward(mine.x, training=True)
    dx = mine.model.backward(mine.dy, input_grad=True)
    yt = case.torch_fn(torch.nn.functional, theirs.x, theirs.params)
    yt.backward(theirs.dy)
    np.testing.assert_allclose(backend.to_numpy(y), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(dx), theirs.x.grad.numpy(), rtol=1e-4,
                               atol=1e-5)


def test_layers_option_errors(capsys):
    assert command.main(TINY + ["--layers", "nosuchlayer"]) == 2
    assert "unknown layer case(s) nosuchlayer" in capsys.readouterr().err
    assert command.main(TINY + ["--layers", "--sweep", "batch=1,2"]) == 2
    assert "--sweep and --layers are separate benchmarks" in capsys.readouterr().err



def test_every_layer_case_names_a_real_layer_and_its_torch_twin_runs():
    """Each case's layer exists, and its PyTorch function takes the layer's parameters (tiny
    inputs: the real sizes are for the bench)."""
    import importlib
    torch = pytest.importorskip("torch")
    from minicnn.tools.bench import layers as bench_layers
    for case in layer_cases.CASES:
        cls = getattr(importlib.import_module(case.module), case.cls)
        assert issubclass(cls, Layer), case.name
        small = (2, case.shape[1], *(min(s, 8) for s in case.shape[2:]))
        tiny = layer_cases.LayerCase(case.name, case.module, case.cls, case.args, small,
                                     case.torch_fn, case.kwargs, case.target)
        if case.cls == "LayerNorm":     # its arguments fix the sample shape: checked at full size
            continue
        mine = bench_layers.LayerRunner(tiny, seed=0)
        theirs = bench_layers.TorchLayerRunner(torch, tiny, mine, "cpu")
        y = mine.model.forward(mine.x, training=True)
        yt = case.torch_fn(torch.nn.functional, theirs.x, theirs.params)
        np.testing.assert_allclose(backend.to_numpy(y), yt.detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=case.name)
