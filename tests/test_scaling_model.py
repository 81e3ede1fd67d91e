"""examples/scaling_model.py: the ring all-reduce model behind the README's scaling table."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "scaling_model.py"


@pytest.fixture(scope="module")
def model():
    spec = importlib.util.spec_from_file_location("scaling_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_ring_allreduce_cost(model):
    assert model.allreduce_seconds(1e9, 1, 10, 5e-6) == 0.0
    # 2 ranks: each sends half of 1 GB... twice: 1 GB at 1.25 GB/s = 0.8 s, plus 2 messages
    assert model.allreduce_seconds(1e9, 2, 10, 5e-6) == pytest.approx(0.8 + 10e-6)
    # many ranks: the bandwidth term tends to 2 * bytes / bandwidth
    assert model.allreduce_seconds(1e9, 1000, 100, 0) == pytest.approx(0.16, rel=1e-2)


def test_efficiency_falls_with_ranks_and_rises_with_bandwidth(model):
    case = model.Case("ref", 421_642, 0.118)
    slow = [model.efficiency(case, n, 10, 5e-6) for n in model.RANKS]
    fast = [model.efficiency(case, n, 100, 5e-6) for n in model.RANKS]
    assert all(0 < e <= 1 for e in slow + fast)
    assert slow == sorted(slow, reverse=True) and all(f > s for f, s in zip(fast, slow))
    assert model.efficiency(case, 8, 10, 5e-6, weak=True) > model.efficiency(case, 8, 10, 5e-6)
    n = model.overlap_from(case, 10, 5e-6)
    step, comm = model.step_seconds(case, n, 10, 5e-6)
    assert comm >= 0.1 * step
    size = model.overlap_bytes(0.118, 64, 10, 5e-6)
    assert model.allreduce_seconds(size, 64, 10, 5e-6) == pytest.approx(0.118 / 9, rel=1e-9)


def test_the_script_prints_the_tables():
    out = subprocess.run([sys.executable, str(SCRIPT), "--step-ms", "100"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "421,642 parameters, 1.69 MB" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 2 and rows[0].count("%") == 4
