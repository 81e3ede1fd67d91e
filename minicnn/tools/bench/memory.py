"""Peak memory, each framework in a child process of its own (``python -m
minicnn.tools.bench --_child SPEC``): resident set (Linux ``VmHWM``) and, on a GPU, the
framework's caching allocator."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import minicnn
from minicnn.core import backend
from minicnn.tools.bench.runners import MinicnnRunner, bench_model, image_to_image, make_batch
from minicnn.tools.bench.torch_twin import TorchRunner

MEMORY_TRAIN_STEPS, MEMORY_INFER_PASSES = 3, 2


def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: VmHWM on Linux (reset by exec, unlike
    ``ru_maxrss``, which a child inherits from its parent), else ``ru_maxrss``."""
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: import one framework, run a few steps, report peak memory."""
    torch: Any = None
    if spec["framework"] == "torch":
        import torch as torch_module
        torch = torch_module
        if spec.get("torch_threads"):
            torch.set_num_threads(spec["torch_threads"])
    elif spec["backend"] != "numpy":
        backend.set_backend(spec["backend"])
    base = _proc_status_mib("VmRSS") or peak_rss_mib()
    minicnn.manual_seed(spec["seed"])
    model = bench_model(spec["model"], spec["width_mult"])
    training = spec["mode"] == "train"
    x, y = make_batch(spec["batch_size"], spec["seed"], image_to_image(model)) if training \
        else (None, None)
    xi = None if training else make_batch(spec["infer_batch_size"], spec["seed"] + 1)[0]
    if torch is not None:
        runner: Any = TorchRunner(torch, model, "cuda" if spec["backend"] == "cupy" else "cpu",
                                  x, y, xi)
        del model
    else:
        runner = MinicnnRunner(model, x, y, xi)
    for _ in range(MEMORY_TRAIN_STEPS if training else MEMORY_INFER_PASSES):
        runner.train_step() if training else runner.infer()
    runner.sync()
    out = {"peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}
    if spec["backend"] == "cupy":
        if torch is not None:
            out["gpu_pool_mib"] = torch.cuda.max_memory_reserved() / 2**20
        else:
            import cupy
            out["gpu_pool_mib"] = cupy.get_default_memory_pool().total_bytes() / 2**20
    return out


def measure_memory(framework: str, backend_name: str, mode: str, args: argparse.Namespace
                   ) -> dict[str, Any] | None:
    """Peak memory of ``framework`` in a child ``python -m minicnn.tools.bench`` process."""
    spec = {"framework": framework, "backend": backend_name, "mode": mode, "model": args.model,
            "width_mult": args.width_mult, "batch_size": args.batch_size, "seed": args.seed,
            "infer_batch_size": args.infer_batch_size, "torch_threads": args.torch_threads}
    env = dict(os.environ)
    env.pop("MINICNN_BACKEND", None)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(minicnn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "minicnn.tools.bench", "--_child", json.dumps(spec)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"bench: memory child for {framework} on {backend_name} failed: {reason}",
              file=sys.stderr)
        return None
    return json.loads(lines[-1])
