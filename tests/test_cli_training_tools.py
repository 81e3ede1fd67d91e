"""`minicnn train`'s training-tool options: --optimizer rmsprop/adagrad, --schedule onecycle and
plateau, --warmup-steps, --clip-norm/--clip-value: validated in one line, logged, kept on
--resume, and a resumed run ends bit-identical."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minicnn
from minicnn.cli import commands as cli

pytestmark = pytest.mark.skipif(not os.environ.get("MINICNN_DATA"),
                                reason="MINICNN_DATA is not set (real MNIST needed)")

TOOLS = ["--optimizer", "rmsprop", "--lr", "0.001", "--momentum", "0.5", "--schedule",
         "onecycle", "--warmup-steps", "3", "--clip-norm", "2.0", "--clip-value", "0.5"]


def _train(out, *extra):
    return cli.main(["train", "--limit", "600", "--test-limit", "100", "--val-split", "60",
                     "--batch-size", "64", "--quiet", "--out", str(out), *extra])


def test_tools_are_logged_and_saved(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2", *TOOLS) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 < r["grad_norm"] <= r["grad_norm_max"] for r in records)
    run = minicnn.checkpoint.load_checkpoint(out / "last.npz").meta["run"]
    assert (run["optimizer"], run["schedule"], run["warmup_steps"], run["clip_norm"],
            run["clip_value"]) == ("rmsprop", "onecycle", 3, 2.0, 0.5)


def test_resume_keeps_the_tools_and_ends_bit_identical(tmp_path, capsys):
    tools = TOOLS[:TOOLS.index("--schedule")] + ["--schedule", "constant"] + \
        TOOLS[TOOLS.index("--warmup-steps"):]       # a constant schedule may be extended
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert _train(whole, "--epochs", "2", *tools) == 0
    assert _train(part, "--epochs", "1", *tools) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(part), "--resume", "--epochs", "2",
                     "--clip-norm", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--clip-norm 3.0 differs from the run being resumed (2.0)" in err
    assert cli.main(["train", "--out", str(part), "--resume", "--epochs", "2", "--quiet"]) == 0
    a, b = minicnn.load(whole / "model.npz"), minicnn.load(part / "model.npz")
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("extra,message", [
    (["--clip-norm", "0"], "--clip-norm: expected a finite number > 0"),
    (["--clip-value", "nan"], "--clip-value: expected a finite number > 0"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
    (["--optimizer", "lion"], "invalid choice: 'lion'"),
])
def test_bad_values_are_usage_errors(tmp_path, capsys, extra, message):
    assert _train(tmp_path / "run", *extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--warmup-steps", "1000"], "--warmup-steps 1000: warm-up of 1000 steps: expected 0 <= "
                                 "warm-up < the run's 9 steps"),
    (["--schedule", "plateau", "--val-split", "0"], "--schedule plateau watches the validation "
                                                    "loss: it needs --val-split > 0"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--optimizer adam: adam has no momentum"),
])
def test_inconsistent_settings_are_one_line_errors(tmp_path, capsys, extra, message):
    assert _train(tmp_path / "run", "--epochs", "1", *extra) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not (tmp_path / "run").exists()


def test_augment_spec_trains_and_is_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1", "--augment", "crop=2,cutout=4") == 0
    ckpt = minicnn.checkpoint.load_checkpoint(out / "last.npz")
    assert ckpt.meta["run"]["augment"] == "crop=2,cutout=4"
    assert ckpt.meta["augment"]["class"] == "Compose"
    assert _train(tmp_path / "bad", "--augment", "crop=two") == 2
    assert "--augment: augmentation 'crop=two': expected shift=K" in capsys.readouterr().err


def test_label_smoothing_trains_is_kept_and_checked(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1", "--label-smoothing", "0.1") == 0
    assert minicnn.checkpoint.load_checkpoint(out / "last.npz").meta["run"][
        "label_smoothing"] == 0.1
    for bad in ("1", "-0.1", "nan"):
        assert _train(tmp_path / "bad", "--label-smoothing", bad) == 2
        assert "--label-smoothing: expected" in capsys.readouterr().err
