"""scripts/gpu_check.sh --dry-run: every step runs on the CPU (or says why it cannot) and
figures.json records each with its status, exit status, log and figures.

The nested pytest step is skipped (GPU_CHECK_SKIP_PYTEST=1, which the script documents), and
the MNIST files are linked into a temporary data folder (MINICNN_DATA): the checkout's
datasets/ is never written.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import ROOT, mnist_root

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ("nvidia_smi", "train", "evaluate", "bench", "sweep", "pytest")


def _data_folder(tmp_path):
    """A data folder holding links to $MINICNN_DATA's mnist/ files (copies where links fail)."""
    source = os.path.join(mnist_root(), "mnist")
    target = tmp_path / "data" / "mnist"
    target.mkdir(parents=True)
    for name in os.listdir(source):
        try:
            (target / name).symlink_to(os.path.join(source, name))
        except OSError:
            shutil.copy(os.path.join(source, name), target / name)
    return target.parent


def test_the_script_is_executable_bash_with_set_u():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -u\n" in text
    assert os.access(SCRIPT, os.X_OK)
    assert "cp ../shared/datasets/mnist/* datasets/mnist/" in text
    assert "GPU_CHECK_SKIP_PYTEST" in text and "MINICNN_DATA" in text


@pytest.mark.slow
def test_dry_run_records_every_step(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed here")
    data = _data_folder(tmp_path)
    out = tmp_path / "out"
    env = dict(os.environ, MINICNN_DATA=str(data), GPU_CHECK_SKIP_PYTEST="1")
    env.pop("MINICNN_BACKEND", None)
    proc = subprocess.run([bash, str(SCRIPT), "--dry-run", str(out)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "figures.json").read_text())
    assert doc["mode"] == "dry-run" and doc["data"] == str(data) and doc["data_has_mnist"]
    assert doc["all_ok"] is True and doc["finished_utc"]
    assert list(doc["steps"]) == list(STEPS)
    for name, entry in doc["steps"].items():
        log = out / entry["log"]
        assert entry["log"] == f"{name}.log" and log.is_file() and log.stat().st_size > 0, name
        assert entry["status"] == "ok" or entry["status"].startswith("skipped: "), (name, entry)
        assert "figures_error" not in entry, (name, entry)
        assert f"gpu_check: {name}: {entry['status']}" in proc.stdout
    steps = doc["steps"]
    assert steps["nvidia_smi"]["status"] == "skipped: needs a GPU"
    assert "skipped: needs a GPU" in (out / "nvidia_smi.log").read_text()
    assert steps["pytest"]["status"] == "skipped: GPU_CHECK_SKIP_PYTEST=1"
    assert "MINICNN_BACKEND=numpy" in steps["pytest"]["command"]
    for name in ("train", "evaluate", "bench", "sweep"):
        assert steps[name]["exit_status"] == 0 and steps[name]["seconds"] >= 0, name
    assert steps["train"]["backend"] == "numpy" and "--limit" in steps["train"]["command"]
    assert 0.1 < steps["train"]["test_accuracy"] <= 1.0
    assert steps["evaluate"]["images"] == 1000 and "--backend numpy" in steps["evaluate"]["command"]
    assert abs(steps["evaluate"]["difference_from_train"]) <= 0.002   # the same 1000 images
    assert (out / "run" / "model.npz").is_file()
    assert steps["bench"]["numpy_minicnn"]["step_s_median"] > 0
    assert steps["bench"]["cupy_tf32"] == "0" and steps["bench"]["unavailable"] == {}
    assert json.loads((out / "bench.json").read_text())["config"]["backends"] == ["numpy"]
    assert steps["sweep"]["crossover"].startswith("CuPy was not measured")
    assert sorted(steps["sweep"]["numpy"], key=int) == ["1", "8", "32"]
    assert all(row["step_ms"] > 0 for row in steps["sweep"]["numpy"].values())


def test_usage_error_without_outdir(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed here")
    proc = subprocess.run([bash, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert proc.returncode == 2 and "usage: bash scripts/gpu_check.sh" in proc.stderr


@pytest.mark.slow
def test_a_failing_step_is_recorded_and_the_script_goes_on(tmp_path):
    """Unreadable MNIST files: train fails (its exit status recorded), evaluate is skipped for
    want of a checkpoint, the script still writes every step and exits 1."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed here")
    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mnist / name).write_bytes(b"not an IDX file")
    out = tmp_path / "out"
    env = dict(os.environ, MINICNN_DATA=str(mnist.parent), GPU_CHECK_ONLY="train,evaluate")
    proc = subprocess.run([bash, str(SCRIPT), "--dry-run", str(out)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads((out / "figures.json").read_text())
    assert list(doc["steps"]) == list(STEPS) and doc["all_ok"] is False
    train = doc["steps"]["train"]
    assert train["status"] == "failed" and train["exit_status"] not in (None, 0)
    assert "figures_error" not in train and (out / "train.log").stat().st_size > 0
    assert doc["steps"]["evaluate"]["status"] == "skipped: train wrote no checkpoint"
    for name in ("bench", "sweep", "pytest"):
        assert doc["steps"][name]["status"] == \
            "skipped: not in GPU_CHECK_ONLY=train,evaluate", name
        assert (out / f"{name}.log").is_file()
