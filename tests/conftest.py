"""Helpers shared by the test modules, and the markers.

Markers (registered in pyproject.toml, ``--strict-markers``):

* ``slow``: a test that takes more than about a second here (real MNIST runs, subprocesses,
  the notebook); the fast loop is ``python -m pytest -m "not slow"``.
* ``gpu``: needs CuPy and a visible GPU; skipped with the reason when there is none.
* ``mpi``: runs ``mpiexec``; skipped with the reason without mpi4py and MPICH.

Helpers are imported by name (``from conftest import randn``), as pytest puts this folder on
``sys.path``.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn.core import backend

ROOT = Path(__file__).resolve().parents[1]
"""The checkout: README.md, examples/ and minicnn/ are under it."""


@pytest.fixture(autouse=True)
def split_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests split batches far smaller than pays (``parallel.MIN_SLICE_WORK``): lifted here, so
    that the split paths run on small inputs (``tests/test_parallel.py`` tests the real
    threshold)."""
    from minicnn.training import parallel
    monkeypatch.setattr(parallel, "MIN_SLICE_WORK", 0)


def randn(*shape: int, seed: int = 0, dtype: type = np.float64) -> np.ndarray:
    """Standard normal values of ``shape`` from a generator of their own (float64 by default:
    gradient checks need it)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype, copy=False)


def mnist_root() -> str:
    """$MINICNN_DATA when it holds the real MNIST (``mnist/``); else the test is skipped."""
    root = os.environ.get("MINICNN_DATA")
    if not root or not (Path(root) / "mnist").is_dir():
        pytest.skip("MINICNN_DATA is not set or has no mnist/: real MNIST not available")
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, for ``python -m minicnn`` and
    scripts in a child process."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@cache
def gpu_unavailable_reason() -> str | None:
    """None when CuPy imports and sees a GPU, else minicnn's one-line reason why not."""
    try:
        backend.get_module("cupy")
    except backend.BackendError as exc:
        return str(exc)
    return None


def find_mpiexec() -> str | None:
    """mpiexec beside this interpreter (the pip ``mpich`` wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


@cache
def mpi_unavailable_reason() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'minicnn[distributed]')"
    if find_mpiexec() is None:
        return "no mpiexec beside the interpreter or on PATH (pip install mpich)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` and ``mpi`` tests are skipped, with the reason, where they cannot run. A test
    that takes the ``cp`` fixture (CuPy on a GPU, tests/test_cuda_kernels.py) is a gpu test."""
    for item in items:
        if "cp" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
        if item.get_closest_marker("gpu") and gpu_unavailable_reason() is not None:
            item.add_marker(pytest.mark.skip(reason=f"no GPU: {gpu_unavailable_reason()}"))
        if item.get_closest_marker("mpi") and mpi_unavailable_reason() is not None:
            item.add_marker(pytest.mark.skip(reason=str(mpi_unavailable_reason())))


@pytest.fixture
def seeded() -> None:
    """minicnn's global generator seeded with 0 (the same initial weights in every test)."""
    minicnn.manual_seed(0)


# --------------------------------------------------------------------------- a local HTTP server

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, length = route
        self.send_response(200)
        if callable(body):            # a stream of chunks, no length: until the client quits
            self.end_headers()
            try:
                for chunk in body():
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # with a short body this cuts the transfer

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server; tests fill ``server.routes[path] = (body, content_length)``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()
