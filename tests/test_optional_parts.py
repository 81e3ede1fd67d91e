"""`pip install -e ".[dev]"` then `python -m pytest -q` passes: every test of an optional part
skips cleanly without its package. The tests that touch one run in a child pytest in which
those packages cannot be imported (``sys.modules[name] = None``: ``import`` raises ImportError
and ``importlib.util.find_spec`` returns None, as on a machine without them)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

OPTIONAL = ("matplotlib", "PIL", "onnx", "onnxruntime", "mpi4py", "torch", "cupy", "cupyx")
TOUCHING = ["test_visualize.py", "test_plots.py", "test_images.py", "test_onnx.py",
            "test_readme.py", "test_distributed.py", "test_cuda_kernels.py", "test_cupy_api.py",
            "test_gpu_parity.py", "test_adam.py", "test_losses_optim.py", "test_cli.py",
            "test_transform_travels.py", "test_cli_training.py", "test_layers.py"]

HIDE = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
"""


@pytest.mark.slow
def test_tests_of_optional_parts_skip_without_their_packages(tmp_path):
    (tmp_path / "hide_optional.py").write_text(HIDE)
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "hide_optional", "-p", "no:cacheprovider",
         "-m", "not slow", *(str(ROOT / "tests" / name) for name in TOUCHING)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    tail = "\n".join(result.stdout.strip().splitlines()[-15:])
    assert result.returncode == 0, tail
    assert " skipped" in tail                              # the optional tests did skip


def test_the_onnx_extra_installs_what_the_readme_imports():
    tomllib = pytest.importorskip("tomllib")                 # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {req.split(">")[0].split("=")[0].split("<")[0].strip() for req in extras["onnx"]}
    assert {"onnx", "onnxruntime"} <= names      # the README's snippet: import onnxruntime
