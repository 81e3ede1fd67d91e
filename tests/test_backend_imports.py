"""The backend switch: array code never imports numpy (it takes the array module of its inputs,
``xp = backend.get_array_module(x)``), and asking for
CuPy where it cannot run fails with one clear ``minicnn.BackendError``.

The import rule is checked statically on the AST of every module under ``minicnn/``: only the
host-side code may import numpy (``HOST_PACKAGES``: data loading and image files, checkpoints,
pictures, ONNX, the command line, benchmarks; ``HOST_MODULES``: the backend itself, the host RNG
and initialisers, and the CUDA kernel launcher).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import gpu_unavailable_reason

import minicnn
from minicnn.core import backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minicnn"
# Host-side code: whole subpackages (data files, checkpoints, pictures, ONNX, the command line
# and the benchmark), and the few modules below them that must hold NumPy arrays.
HOST_PACKAGES = ("data/", "saving/", "viz/", "onnx/", "cli/", "tools/")
HOST_MODULES = {"core/backend.py", "core/random.py", "layers/initializers.py", "kernels/cuda.py"}
MUST_BE_CHECKED = ["kernels/im2col.py", "models.py", "training/losses.py",
                   "training/optimizers.py", "testing/gradient_check.py", "training/parallel.py",
                   "core/modes.py", "core/symbolic.py", "training/loop.py",
                   "layers/base.py", "layers/conv.py", "layers/dense.py", "layers/pooling.py",
                   "layers/activations.py", "layers/merge.py", "layers/normalization.py",
                   "layers/dropout.py", "layers/flatten.py", "layers/__init__.py"]


def numpy_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every way ``source`` imports numpy (or a numpy submodule), as 'line N: text'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module"):
                names = [node.args[0].value]
        if any(n == "numpy" or n.startswith("numpy.") for n in names):
            found.append(f"line {node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def package_modules() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def host_side(module: str) -> bool:
    return module in HOST_MODULES or module.startswith(HOST_PACKAGES)


# =========================================================================== the checker itself

@pytest.mark.parametrize("source", [
    "import numpy as np",
    "import numpy",
    "import os, numpy",
    "import numpy.linalg",
    "from numpy import x",
    "from numpy.lib.stride_tricks import as_strided",
    "def f():\n    import numpy as np\n    return np",
    "try:\n    pass\nexcept ImportError:\n    from numpy import zeros",
    "np = __import__('numpy')",
    "import importlib\nnp = importlib.import_module('numpy')",
])
def test_checker_catches_numpy_imports(source):
    assert numpy_imports(source), source


@pytest.mark.parametrize("source", [
    "import numpyish",
    "from numpyish import numpy",
    "from minicnn import backend\nxp = backend.xp",
    "from . import numpy_helpers",
    "# import numpy as np\ns = 'import numpy'",
    "x = backend.to_numpy(a)",
])
def test_checker_ignores_lookalikes(source):
    assert numpy_imports(source) == [], source


def test_checker_reports_the_line():
    assert numpy_imports("import os\n\nfrom numpy import zeros\n") == \
        ["line 3: from numpy import zeros"]


# =========================================================================== the package

def test_every_core_module_is_checked():
    modules = package_modules()
    for name in MUST_BE_CHECKED:
        assert name in modules and not host_side(name)


@pytest.mark.parametrize("module", [m for m in package_modules() if not host_side(m)])
def test_no_numpy_import_outside_the_host_side_modules(module):
    path = PACKAGE / module
    found = numpy_imports(path.read_text(), str(path))
    assert not found, (f"minicnn/{module} imports numpy ({'; '.join(found)}); array code must "
                       "take the array module of its arrays (xp = backend.get_array_module(x))")


# ======================================================================= CuPy where it cannot run

def run_import(env_backend: str, fake_cupy: str | None, tmp_path: Path):
    """``python -c "import minicnn"`` with MINICNN_BACKEND set, optionally with a fake ``cupy``
    module first on the path."""
    env = dict(os.environ, MINICNN_BACKEND=env_backend)
    paths = [str(ROOT)]
    if fake_cupy is not None:
        (tmp_path / "cupy.py").write_text(textwrap.dedent(fake_cupy))
        paths.insert(0, str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", "import minicnn; print(minicnn.get_backend())"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_one_backend_error(result, *needles):
    assert result.returncode != 0, result.stdout
    line = last_line(result.stderr)
    assert line.startswith("minicnn.core.backend.BackendError: "), result.stderr
    for needle in needles:
        assert needle in line, line
    # one error, not a chain of tracebacks
    assert "During handling of the above exception" not in result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1


@pytest.mark.slow
def test_env_cupy_with_the_real_cupy_or_without_it(tmp_path):
    """The machine as it is: CuPy may or may not be installed; without a GPU it must fail."""
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is visible here: MINICNN_BACKEND=cupy works")
    result = run_import("cupy", None, tmp_path)
    assert_one_backend_error(result, "backend 'cupy'")
    line = last_line(result.stderr)
    assert "not installed" in line or "no GPU is visible" in line


def test_env_cupy_without_cupy_installed(tmp_path):
    result = run_import("cupy", "raise ModuleNotFoundError(\"No module named 'cupy'\")\n",
                        tmp_path)
    assert_one_backend_error(result, "needs CuPy", "not installed", "pip install")


def test_env_cupy_without_a_gpu(tmp_path):
    fake = """
        class _Runtime:
            @staticmethod
            def getDeviceCount():
                raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        class cuda:
            runtime = _Runtime
    """
    result = run_import("cupy", fake, tmp_path)
    assert_one_backend_error(result, "no GPU is visible", "cudaErrorNoDevice")


def test_env_cupy_with_zero_devices(tmp_path):
    fake = """
        class _Runtime:
            @staticmethod
            def getDeviceCount():
                return 0
        class cuda:
            runtime = _Runtime
    """
    assert_one_backend_error(run_import("cupy", fake, tmp_path), "no GPU is visible")


def test_env_numpy_and_bogus(tmp_path):
    ok = run_import(" NumPy ", None, tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "numpy", ok.stderr
    bad = run_import("bogus", None, tmp_path)
    assert bad.returncode != 0
    assert last_line(bad.stderr).startswith("ValueError: unknown backend 'bogus'")


def test_set_backend_cupy_raises_backend_error_and_keeps_numpy(monkeypatch):
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is visible here")
    with pytest.raises(minicnn.BackendError, match="backend 'cupy'"):
        minicnn.set_backend("cupy")
    assert minicnn.get_backend() == "numpy" and backend.xp.__name__ == "numpy"


def test_set_backend_cupy_without_cupy_in_process(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # makes `import cupy` fail
    with pytest.raises(minicnn.BackendError, match="needs CuPy, which is not installed"):
        minicnn.set_backend("cupy")
    assert minicnn.get_backend() == "numpy"


def test_backend_error_is_a_runtime_error():
    assert issubclass(minicnn.BackendError, RuntimeError)


def test_set_backend_bogus_raises_value_error():
    with pytest.raises(ValueError, match=r"unknown backend 'bogus': expected one of \('numpy', "
                                         r"'cupy'\)"):
        minicnn.set_backend("bogus")
    assert minicnn.get_backend() == "numpy"
    minicnn.set_backend("numpy")
    assert minicnn.get_backend() == "numpy"
