"""Tests for the command line: a quick `minicnn train` run and its run directory, evaluate,
predict, summary, Ctrl-C + --resume, and one-line errors without tracebacks."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import mnist_root

import minicnn
from minicnn.cli import commands as cli
from minicnn.viz import plots

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    return Path(mnist_root())


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m minicnn ARGS`` in a fresh process, from the repository root."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "minicnn", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def png(pixels: np.ndarray) -> bytes:
    """A minimal 8-bit greyscale PNG (filter 0 on every row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))
    h, w = pixels.shape
    raw = b"".join(b"\0" + row.tobytes() for row in pixels.astype(np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = data_root()
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train", "--limit", "2000", "--epochs", "1", "--test-limit", "1000",
                     "--out", str(out), "--data-root", str(root))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "test accuracy" in result.stdout
    return out


@pytest.mark.slow
def test_train_writes_the_run_directory(run_dir):
    files = {p.name for p in run_dir.iterdir()}
    assert {"model.npz", "last.npz", "best.npz", "metrics.jsonl"} <= files
    if plots.available():
        assert {"curves.png", "confusion.png"} <= files
        assert (run_dir / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert not [name for name in files if name.startswith(".")]      # no temp files
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["step"] == 15     # 1800 / 128: 200 held out
    assert 0.5 < record["val_acc"] <= 1.0 and 0.5 < record["test_acc"] <= 1.0
    ckpt = minicnn.checkpoint.load_checkpoint(run_dir / "model.npz")
    assert ckpt.meta["dataset"] == "mnist" and ckpt.meta["model_name"] == "ref-cnn"
    assert ckpt.meta["transform"] == {"class": "Normalize", "mean": 0.1307, "std": 0.3081}
    assert ckpt.meta["run"]["lr"] == 0.05 and ckpt.meta["test_acc"] == record["test_acc"]
    assert ckpt.meta["run"]["val_split"] == 200 and ckpt.model.input_transform.mean == 0.1307
    best = minicnn.checkpoint.load_checkpoint(run_dir / "best.npz")
    assert best.meta["best_epoch"] == 1


@pytest.mark.slow
def test_evaluate(run_dir, capsys, monkeypatch):
    assert cli.main(["evaluate", str(run_dir / "model.npz"), "--limit", "500"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "per-class accuracy" in out and "confusion matrix" in out
    assert "500 images" in out
    monkeypatch.setattr(plots, "available", lambda: False)
    (run_dir / "confusion.png").unlink(missing_ok=True)
    assert cli.main(["evaluate", str(run_dir / "model.npz"), "--limit", "100"]) == 0
    assert capsys.readouterr().err.count("matplotlib is not installed") == 1
    assert not (run_dir / "confusion.png").exists()


@pytest.mark.slow
def test_predict_files_and_indices(run_dir, tmp_path, capsys):
    from minicnn.data.datasets import load_mnist
    _, (xt, yt) = load_mnist(data_root(), download=False, verify=False)
    image = tmp_path / "digit.png"
    image.write_bytes(png(xt[3]))
    (tmp_path / "digit.pgm").write_bytes(b"P5 28 28 255\n" + xt[3].tobytes())
    assert cli.main(["predict", str(run_dir / "model.npz"), str(image),
                     str(tmp_path / "digit.pgm"), "3", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{image}: ") and "p=" in lines[0]
    guesses = [line.split(": ", 1)[1].split("  [")[0] for line in lines]
    assert guesses[0] == guesses[1] == guesses[2]              # same image, three ways
    assert lines[2].endswith(f"[true: {yt[3]}]")

    big = np.kron(xt[3], np.ones((2, 2), np.uint8))              # 56x56: resized to 28x28
    (tmp_path / "big.png").write_bytes(png(big))
    (tmp_path / "paper.png").write_bytes(png(255 - big))          # dark digit on white paper
    assert cli.main(["predict", str(run_dir), str(tmp_path / "big.png"),
                     str(tmp_path / "paper.png")]) == 0            # a run folder works too
    captured = capsys.readouterr()
    resized = [line.split(": ", 1)[1].split(" (p=")[0] for line in captured.out.splitlines()]
    assert resized == [guesses[0].split(" (p=")[0]] * 2
    assert captured.err.strip() == (f"note: {tmp_path / 'paper.png'} has a light background; "
                                    "inverted to white on black, as the model was trained")
    assert cli.main(["predict", str(run_dir / "model.npz"), "99999"]) == 1
    assert "out of range" in one_line_error(capsys.readouterr().err)


def test_summary(capsys):
    assert cli.main(["summary", "--model", "ref-cnn"]) == 0
    assert "Total params: 421,642" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path):
    root = str(data_root())
    args = ["--model", "lenet5", "--limit", "512", "--batch-size", "32", "--epochs", "3",
            "--test-limit", "200", "--seed", "1", "--augment", "1", "--data-root", root,
            "--quiet"]
    # All three runs in child processes of the same environment: this process's tests change
    # settings (conftest lifts the split threshold) that would make the arithmetic differ.
    done = run_cli("train", *args, "--out", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "minicnn", "train", *args, "--out",
                             str(tmp_path / "b")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "b" / "last.npz").exists() and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)                     # during epoch 2, most likely
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    if "interrupted at epoch" in err or "interrupted after epoch" in err:   # fit saw it
        assert proc.returncode == 130 and "--resume" in err
        assert not (tmp_path / "b" / "model.npz").exists()
    done = run_cli("train", "--out", str(tmp_path / "b"), "--resume", "--data-root", root,
                   "--quiet")
    assert done.returncode == 0, done.stderr
    a = minicnn.load(tmp_path / "a" / "model.npz")
    b = minicnn.load(tmp_path / "b" / "model.npz")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(p.data, q.data), name
    metrics = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in "ab"]
    strip = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
              for line in lines] for lines in metrics]
    assert len(strip[0]) == 3 and strip[0] == strip[1]


# --------------------------------------------------------------------------- errors

def test_unknown_model_exits_2_with_one_line():
    result = run_cli("train", "--model", "resnet9000")
    assert result.returncode == 2
    assert "--model: expected one of ref-cnn" in one_line_error(result.stderr)
    assert "got 'resnet9000'" in one_line_error(result.stderr)


def test_missing_data_root_exits_1_with_one_line(tmp_path):
    result = run_cli("train", "--data-root", str(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "run"))
    assert result.returncode == 1
    assert "nowhere: no such folder" in one_line_error(result.stderr)


def test_dataset_missing_files_is_one_line(tmp_path, capsys):
    (tmp_path / "empty" / "mnist").mkdir(parents=True)
    (tmp_path / "empty" / "mnist" / "train-images-idx3-ubyte").write_bytes(b"junk")
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "empty" / "mnist" / name).write_bytes(b"junk")
    code = cli.main(["train", "--data-root", str(tmp_path / "empty"), "--out",
                     str(tmp_path / "run"), "--quiet"])
    assert code == 1
    assert "not an IDX file" in one_line_error(capsys.readouterr().err)


def test_bad_checkpoint_paths(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "missing.npz")]) == 1
    assert "missing.npz: no such checkpoint file" in one_line_error(capsys.readouterr().err)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert cli.main(["predict", str(tmp_path / "bad.npz"), "0"]) == 1
    assert "bad.npz" in one_line_error(capsys.readouterr().err)
    assert cli.main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "no checkpoint" in one_line_error(capsys.readouterr().err)


def test_existing_run_needs_resume(run_dir, capsys):
    assert cli.main(["train", "--out", str(run_dir)]) == 1
    assert "--resume" in one_line_error(capsys.readouterr().err)
    assert cli.main(["train", "--out", str(run_dir), "--resume", "--lr", "0.1"]) == 1
    assert "differs from the run being resumed" in one_line_error(capsys.readouterr().err)


def test_cupy_backend_without_gpu_is_one_line(capsys):
    try:
        minicnn.backend.get_module("cupy")
        pytest.skip("CuPy and a GPU are available here")
    except minicnn.BackendError:
        pass
    assert cli.main(["train", "--backend", "cupy"]) == 1
    assert "cupy" in one_line_error(capsys.readouterr().err)
    assert minicnn.get_backend() == "numpy"


def test_bench_is_wired(capsys):
    pytest.importorskip("minicnn.tools.bench")
    assert cli.main(["bench", "--help"]) == 0
    assert "minicnn bench" in capsys.readouterr().out


GAIN = '''
from minicnn.layers import Layer, Parameter, initializers

class FileGain(Layer):
    def __init__(self, features: int):
        super().__init__()
        self.g = Parameter(initializers.ones((features,)), "g")
    def forward(self, x):
        return x * self.g.data
'''


def test_import_takes_a_file_path_as_well_as_a_module_name(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mylayers.py").write_text(GAIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(work))
    import mylayers
    model = minicnn.Sequential([minicnn.layers.Dense(3, 2), mylayers.FileGain(2)],
                               input_shape=(3,))
    minicnn.save(model, tmp_path / "custom.npz")
    minicnn.layers.LAYER_REGISTRY.pop("FileGain")          # a fresh process would not know it
    monkeypatch.delitem(sys.modules, "mylayers")
    assert cli.main(["summary", "custom.npz", "--import", "work/mylayers.py"]) == 0
    assert "filegain_1 (FileGain)" in capsys.readouterr().out
    monkeypatch.delitem(sys.modules, "mylayers")
    assert cli.main(["summary", "custom.npz", "--import", "work/nothere.py"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--import work/nothere.py: no such file" in err
    minicnn.layers.LAYER_REGISTRY.pop("FileGain", None)
