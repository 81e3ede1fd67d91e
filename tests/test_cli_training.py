"""`minicnn train`'s options as a user meets them: optimizers, validation split, early stop,
resume rules, divergence, learning-rate checks, custom layers through --import."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import minicnn
from minicnn.cli import commands as cli

pytestmark = pytest.mark.skipif(not os.environ.get("MINICNN_DATA"),
                                reason="MINICNN_DATA is not set (real MNIST needed)")


def _train(tmp_path, *extra, name="run") -> tuple[int, Path]:
    out = tmp_path / name
    status = cli.main(["train", "--limit", "1000", "--test-limit", "300", "--epochs", "1",
                       "--quiet", "--out", str(out), *extra])
    return status, out


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1", "x"])
def test_bad_learning_rates_are_usage_errors(tmp_path, capsys, lr):
    assert _train(tmp_path, "--lr", lr)[0] == 2
    assert "--lr: expected a finite number > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_adam_with_its_own_defaults_and_a_line_per_epoch(tmp_path, capsys):
    status, out = _train(tmp_path, "--optimizer", "adam", "--epochs", "2")
    assert status == 0
    err = capsys.readouterr().err
    assert err.count("\nepoch ") + err.startswith("epoch ") == 2 and "it/s" not in err
    ckpt = minicnn.checkpoint.load_checkpoint(out / "last.npz")
    assert ckpt.meta["run"]["optimizer"] == "adam" and ckpt.meta["run"]["lr"] == 0.001
    assert ckpt.optimizer_state["class"] == "Adam"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [set(r) >= {"val_loss", "val_acc"} for r in records] == [True, True]
    assert "test_acc" in records[-1] and "test_acc" not in records[0]


@pytest.mark.slow
def test_resume_refuses_to_bend_a_cosine_schedule(tmp_path, capsys):
    status, out = _train(tmp_path)
    assert status == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "schedule was planned over 1 epochs" in err
    status, out = _train(tmp_path, "--schedule", "constant", name="constant")
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0


@pytest.mark.slow
def test_early_stop_when_validation_stops_improving(tmp_path, capsys):
    status, out = _train(tmp_path, "--epochs", "6", "--lr", "1e-30", "--momentum", "0",
                         "--early-stop", "2")
    assert status == 0
    err = capsys.readouterr().err
    assert "early stop: validation loss has not improved for 2 epochs (best: epoch 1)" in err
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 3


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_leaves_nothing(tmp_path, capsys):
    status, out = _train(tmp_path, "--lr", "10")
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("minicnn train: error: loss ") and "diverged" in err[-1]
    assert not any("Warning" in line for line in err)
    assert not out.exists()


CUSTOM = '''
import minicnn
from minicnn.core import backend
from minicnn.layers import initializers
from minicnn.layers import Layer, Parameter

class Gain(Layer):
    def __init__(self, features: int):
        super().__init__()
        self.g = Parameter(initializers.ones((features,)), "g")
    def forward(self, x):
        self.save_for_backward(x)
        return x * self.g.data
    def backward(self, grad_out):
        (x,) = self.pop_saved()
        self.g.grad += (grad_out * x).sum(axis=0)
        return grad_out * self.g.data
'''


def test_custom_layers_load_through_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_layers.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_layers
    model = minicnn.Sequential([minicnn.layers.Flatten(), minicnn.layers.Dense(784, 10),
                                my_layers.Gain(10)], input_shape=(1, 28, 28))
    minicnn.save(model, tmp_path / "custom.npz", dataset="mnist")
    minicnn.layers.LAYER_REGISTRY.pop("Gain")             # a fresh process would not know it
    monkeypatch.delitem(sys.modules, "my_layers")
    assert cli.main(["evaluate", "custom.npz", "--limit", "50"]) == 1
    err = capsys.readouterr().err
    assert "unknown layer class 'Gain'" in err and "--import MODULE" in err
    assert cli.main(["evaluate", "custom.npz", "--limit", "50", "--import", "my_layers"]) == 0
    out, err = capsys.readouterr()
    assert "50 images" in out
    # saved without fit, so without a transform: said once, in one line
    assert err.count("minicnn evaluate: warning: Sequential has no input transform") == 1
    assert (tmp_path / "evaluate_confusion.png").exists() or not minicnn.plots.available()
    assert cli.main(["summary", "custom.npz", "--import", "my_layers"]) == 0
    assert "gain_1 (Gain)" in capsys.readouterr().out
    assert cli.main(["evaluate", "custom.npz", "--import", "no_such_module"]) == 1
    assert "--import no_such_module: cannot import it" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_unless_overwrite(tmp_path, capsys):
    status, out = _train(tmp_path, "--limit", "300", "--val-split", "0")
    assert status == 0
    first = (out / "model.npz").read_bytes()
    capsys.readouterr()
    assert _train(tmp_path, "--limit", "300", "--val-split", "0")[0] == 1   # the default
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds a run" in err and "--overwrite" in err
    assert (out / "model.npz").read_bytes() == first
    assert _train(tmp_path, "--limit", "300", "--val-split", "0", "--seed", "1",
                  "--overwrite")[0] == 0
    assert (out / "model.npz").read_bytes() != first
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 1                                  # the new run's only


def test_a_batch_larger_than_the_data_is_refused_in_one_line(tmp_path, capsys):
    assert _train(tmp_path, "--batch-size", "1000000")[0] == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--batch-size 1000000 is larger than the 900 training images" \
        in err


def test_a_batch_that_does_not_fit_in_memory_names_what_it_needs(tmp_path, capsys,
                                                                monkeypatch):
    from minicnn.cli import train as cli_train

    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(cli_train, "fit", no_memory)
    assert _train(tmp_path, "--batch-size", "512")[0] == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]          # after "training ..."
    assert err.startswith("minicnn train: error: out of memory") and "internal error" not in err
    assert "batches of 512 images needs about 0.5 GiB" in err


@pytest.mark.slow
def test_precision_fp16_trains_and_resume_keeps_it(tmp_path, capsys):
    status, out = _train(tmp_path, "--precision", "fp16", "--limit", "64", "--test-limit", "64",
                         "--batch-size", "32", "--val-split", "0", "--model", "lenet5")
    assert status == 0
    ckpt = minicnn.checkpoint.load_checkpoint(out / "last.npz")
    assert ckpt.meta["run"]["precision"] == "fp16"
    assert "skipped_steps" in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    status = cli.main(["train", "--out", str(out), "--resume", "--precision", "fp32",
                       "--quiet"])
    assert status != 0 and "--precision fp32 differs" in capsys.readouterr().err


def test_precision_bf16_is_refused_on_numpy_in_one_line(tmp_path, capsys):
    status, out = _train(tmp_path, "--precision", "bf16", "--limit", "64", "--test-limit",
                         "64", "--batch-size", "32", "--val-split", "0", "--model", "lenet5")
    err = capsys.readouterr().err
    assert status == 1 and "bfloat16" in err and err.strip().count("\n") == 0
    assert not out.exists()
