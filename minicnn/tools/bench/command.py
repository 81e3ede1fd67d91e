"""``minicnn bench``: how fast the reference CNN trains and infers, per backend, against PyTorch.

What is measured, for each backend (``--backend numpy``, ``--backend cupy``, or both):

* **training**: on one fixed batch, ``--steps`` timed steps after ``--warmup``, of fit's step
  (``minicnn.training.train_step``) and of the README's hand-written loop (``HAND_LOOP``) on the
  same model, which should be as fast (the model splits each batch among replicas by itself,
  ``minicnn.training.parallel``); the figure is the **median** seconds per step, from which
  seconds per epoch (ceil(60,000 / batch) steps) and training images/s follow;
* **inference**: forward only in eval mode on a batch of ``--infer-batch-size`` (1000) images,
  median of ``--infer-steps`` passes after one warm-up pass;
* **per layer**: each layer's forward and backward timed on its own, in sequence, on one
  replica's share of the batch (``layer_breakdown``);
* **memory**: peak resident set (Linux ``VmHWM``) of a *separate child process* per framework
  running 3 training steps, or 2 inference passes, and that peak minus its resident set after
  the imports; on a GPU, the framework's caching allocator (CuPy pool, ``max_memory_reserved``).

``--compare torch`` builds the identical model in PyTorch (weights copied from minicnn, same
SGD and loss); on a GPU with TF32 off and ``cudnn.benchmark`` on (``torch_twin.cuda_settings``,
recorded in the JSON; CuPy's TF32 is off unless ``CUPY_TF32=1``, recorded too). The runners
alternate in blocks of 5 steps in one run, so machine noise hits all (``time_alternating``);
minicnn/PyTorch is reported for every figure, hand loop/PyTorch for training. GPU timings
synchronize before reading the clock, after untimed warm-up steps (first-call compilation).
Inputs are random N(0, 1) images with random labels, from a fixed seed. PyTorch is optional:
imported only for ``--compare torch``. A backend that cannot run here (CuPy missing, no GPU)
is reported as not measured, with the reason, and the others run; with none left the command
fails in one line (exit 2). ``--sweep batch=1,8,32,...`` times fit's step per batch size
instead (``sweep``); ``--layers`` times single layers against PyTorch at realistic sizes
(``layers``, cases in ``layer_cases``). Like the ``minicnn`` command, ``main`` and ``run`` call
``minicnn.kernels.allocator.keep_freed_memory()`` first.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import numpy

import minicnn
from minicnn import zoo
from minicnn.core import backend
from minicnn.kernels import allocator, blas
from minicnn.tools.bench import layers as bench_layers
from minicnn.tools.bench import report as bench_report
from minicnn.tools.bench import roofline
from minicnn.tools.bench import sweep as bench_sweep
from minicnn.tools.bench.layer_cases import find_cases
from minicnn.tools.bench.memory import measure_memory, run_child
from minicnn.tools.bench.report import EPOCH_IMAGES
from minicnn.tools.bench.runners import (
    DATA_NOTE,
    HAND_LOOP,
    IMAGE_SHAPE,
    HandLoopRunner,
    MinicnnRunner,
    bench_model,
    image_to_image,
    make_batch,
)
from minicnn.tools.bench.timing import layer_breakdown, split_count, time_alternating
from minicnn.tools.bench.torch_twin import TorchRunner
from minicnn.training.recipe import REFERENCE_RECIPE as RECIPE

MODELS = tuple(zoo.MODELS)             # built by minicnn.zoo; --width-mult for ref-cnn
MAX_LAYER_STEPS = 10


# --- the model, the data and the same model in PyTorch ------------------------------------------


# --- one framework's training step and inference pass ------------------------------------------


# --- memory, in a child process per framework ---------------------------------------------------


# --- one backend, summaries and the report ------------------------------------------------------
def _train_figures(train_s: list[float], batch_size: int) -> dict[str, Any]:
    step = statistics.median(train_s)
    steps_per_epoch = math.ceil(EPOCH_IMAGES / batch_size)
    return {"step_s_median": step, "step_s_min": min(train_s), "step_s_max": max(train_s),
            "step_s": train_s, "steps_per_epoch": steps_per_epoch,
            "epoch_s": step * steps_per_epoch, "train_img_s": batch_size / step}


def _infer_figures(infer_s: list[float], batch_size: int) -> dict[str, Any]:
    infer = statistics.median(infer_s)
    return {"infer_s_median": infer, "infer_s": infer_s, "infer_img_s": batch_size / infer}


def _add_memory(figures: dict[str, Any], framework: str, backend_name: str,
                args: argparse.Namespace) -> None:
    for mode in ("train", "infer"):
        mem = measure_memory(framework, backend_name, mode, args) or {}
        peak, base = mem.get("peak_rss_mib"), mem.get("base_rss_mib")
        figures[f"{mode}_peak_rss_mib"] = peak
        figures[f"{mode}_rss_increase_mib"] = None if peak is None else peak - base
        if backend_name == "cupy":
            figures[f"{mode}_gpu_pool_mib"] = mem.get("gpu_pool_mib")


RATIO_KEYS = ("step_s_median", "epoch_s", "train_img_s", "infer_img_s", "train_peak_rss_mib",
              "train_rss_increase_mib", "infer_peak_rss_mib", "infer_rss_increase_mib",
              "train_gpu_pool_mib", "infer_gpu_pool_mib")
TRAIN_KEYS = RATIO_KEYS[:3]


def _ratios(a: dict[str, Any], b: dict[str, Any], keys: Sequence[str] = RATIO_KEYS
            ) -> dict[str, float | None]:
    return {k: a[k] / b[k] if a.get(k) and b.get(k) else None for k in keys if k in a}


def _speedup(cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, float]:
    """How many times faster the GPU is: CPU time / GPU time, GPU images/s / CPU images/s."""
    times = ("step_s_median", "epoch_s")
    return {k: cpu[k] / gpu[k] if k in times else gpu[k] / cpu[k]
            for k in times + ("train_img_s", "infer_img_s")}


def bench_backend(backend_name: str, args: argparse.Namespace, torch: Any = None
                  ) -> dict[str, Any]:
    """All figures for one backend: minicnn (fit's step and the hand loop), optionally PyTorch,
    their ratios, the layers."""
    backend.set_backend(backend_name)
    minicnn.manual_seed(args.seed)
    model = bench_model(args.model, args.width_mult)
    x, y = make_batch(args.batch_size, args.seed, image_to_image(model))
    xi, _ = make_batch(args.infer_batch_size, args.seed + 1)
    runners: list[Any] = [MinicnnRunner(model, x, y, xi), HandLoopRunner(model, x, y)]
    device = "cuda" if backend_name == "cupy" else "cpu"
    if torch is not None:
        if device == "cuda" and not torch.cuda.is_available():
            print("PyTorch has no CUDA device here: reporting minicnn alone on cupy.")
        else:
            runners.append(TorchRunner(torch, model, device, x, y, xi))  # same initial weights
    log = _log(backend_name)
    log(f"timing {args.steps} training steps after {args.warmup} warm-up "
        f"({', '.join(r.name for r in runners)})")
    train_s = time_alternating(runners, "train_step", args.warmup, args.steps, args.pause)
    log("timing each layer")
    layers = layer_breakdown(runners[0], max(1, min(args.steps, MAX_LAYER_STEPS)))
    log(f"timing {args.infer_steps} inference passes of {args.infer_batch_size} images")
    inferring = [r for r in runners if not isinstance(r, HandLoopRunner)]  # same as fit's
    infer_s = dict(zip((r.name for r in inferring),
                       time_alternating(inferring, "infer", 1, args.infer_steps, args.pause)))
    result: dict[str, Any] = {"layers": layers, "roofline": _roofline(model, args, train_s[0])}
    for runner, t_s in zip(runners, train_s):
        figures = result[runner.name] = _train_figures(t_s, args.batch_size)
        if isinstance(runner, HandLoopRunner):
            continue
        figures.update(_infer_figures(infer_s[runner.name], args.infer_batch_size))
        log(f"measuring {runner.name} memory in child processes")
        _add_memory(figures, runner.name, backend_name, args)
        if isinstance(runner, TorchRunner):
            figures.update(device=device, threads=torch.get_num_threads())
            if runner.settings:
                figures["cuda_settings"] = runner.settings
        else:
            figures["workers"] = split_count(runner)
    hand, fit = result[HandLoopRunner.name], result[MinicnnRunner.name]
    result["hand_loop_vs_fit_step"] = _ratios(hand, fit, TRAIN_KEYS)
    if "torch" in result:
        result["ratio"] = {"fit step": _ratios(fit, result["torch"]),
                           "hand loop": _ratios(hand, result["torch"], TRAIN_KEYS)}
    return result


def _roofline(model: Any, args: argparse.Namespace, fit_s: list[float]) -> dict[str, Any]:
    """The step's FLOPs, the GFLOP/s fit's median step achieves, the matmul peak measured now
    on the active backend."""
    flops = roofline.step_flops(model, IMAGE_SHAPE, args.batch_size)
    peak = roofline.matmul_peak(backend.get_module(backend.get_backend()),
                                sync=backend.synchronize)
    step = statistics.median(fit_s)
    return {"step_flops": flops["step"], "forward_flops": flops["forward"],
            "achieved_flop_s": flops["step"] / step, "matmul_peak_flop_s": peak,
            "line": roofline.roofline_line(flops, step, peak)}


def machine_info(backends: Sequence[str], torch: Any = None) -> dict[str, Any]:
    """CPU model, core count, versions, numpy's BLAS and (for cupy) the GPU's name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "minicnn": minicnn.__version__, "numpy_blas": None,
        "blas_threads_env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                         "MKL_NUM_THREADS") if k in os.environ}}
    try:
        build = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{build.get('name')} {build.get('version')}"
    except Exception:   # older numpy: no mode="dicts"
        pass
    info["blas_kernels"] = blas.kernels()
    info["blas_note"] = blas.slow_kernels_note()
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if "cupy" in backends:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info.update(cupy=cupy.__version__, gpu=props["name"].decode(errors="replace"))
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (used by ``minicnn bench`` and by ``main``)."""
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    parser.add_argument("--infer-batch-size", type=int, default=1000,
                        help="inference batch (default 1000)")
    parser.add_argument("--infer-steps", type=int, default=5,
                        help="timed inference passes (default 5)")
    parser.add_argument("--width-mult", type=int, default=1,
                        help="ref-cnn: multiply the conv channel counts 32/64 by K (default 1)")
    parser.add_argument("--model", choices=MODELS, default="ref-cnn",
                        help="the zoo model timed (default ref-cnn); with --compare torch, "
                             "against its PyTorch twin (same weights, same step)")
    parser.add_argument("--backend", action="append", choices=backend.BACKENDS,
                        help="numpy or cupy; repeat for both (default numpy)")
    parser.add_argument("--backends", help="comma-separated backends, e.g. numpy,cupy")
    parser.add_argument("--compare", choices=["torch"], help="also run the same model in PyTorch")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch CPU threads (default: PyTorch's own default)")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="idle seconds before each turn when runners alternate, so one's "
                             "spinning worker threads do not slow the next (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--sweep", metavar="batch=B1,B2,...",
                        help="instead, time fit's step per batch size on each backend, with "
                             "each layer's host and device time on CuPy, and say from which "
                             "batch CuPy is faster than NumPy (e.g. batch=1,8,32,128,512)")
    parser.add_argument("--layers", nargs="?", const=True, metavar="NAME,...",
                        help="instead, time single layers (all, or the cases named) at "
                             "realistic sizes, each against PyTorch with --compare torch")


def _backend_list(args: argparse.Namespace) -> list[str]:
    names = list(args.backend or [])
    if args.backends:
        names += [b.strip().lower() for b in args.backends.split(",") if b.strip()]
    for b in names:
        if b not in backend.BACKENDS:
            raise ValueError(f"unknown backend {b!r}: expected "
                             f"{' or '.join(backend.BACKENDS)}")
    return list(dict.fromkeys(names)) or ["numpy"]


def _check(args: argparse.Namespace) -> tuple[list[str], list[int] | None]:
    """The backends asked for and the sweep's batch sizes (None: no sweep); ValueError for
    a usage error."""
    backends = _backend_list(args)
    for key in ("steps", "batch_size", "infer_batch_size", "infer_steps", "width_mult"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1")
    if args.width_mult != 1 and args.model != "ref-cnn":
        raise ValueError(f"--width-mult applies to ref-cnn only, not {args.model}")
    if args.warmup < 0 or args.pause < 0:
        raise ValueError("--warmup and --pause must be >= 0")
    spec = getattr(args, "sweep", None)
    batches = None if spec is None else bench_sweep.parse_sweep(spec)
    if batches is not None and args.compare:
        raise ValueError("--sweep times minicnn alone: drop --compare")
    if batches is not None and getattr(args, "layers", None):
        raise ValueError("--sweep and --layers are separate benchmarks: give one")
    if getattr(args, "layers", None) not in (None, True):
        find_cases(args.layers)                          # an unknown name: a usage error
    return backends, batches


def _unavailable(backends: Sequence[str]) -> dict[str, str]:
    """{backend: why it cannot run here} for those of ``backends`` that cannot."""
    reasons = {}
    for b in backends:
        try:
            backend.get_module(b)
        except minicnn.BackendError as exc:
            reasons[b] = str(exc)
    return reasons


def _config(args: argparse.Namespace, backends: list[str], measured: list[str]
            ) -> dict[str, Any]:
    params = sum(p.size for p in
                 bench_model(args.model, args.width_mult).parameters())
    return {"model": args.model, "width_mult": args.width_mult, "params": params,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "infer_batch_size": args.infer_batch_size, "infer_steps": args.infer_steps,
            "seed": args.seed, "pause_s": args.pause, "backends": backends,
            "backends_measured": measured, "data": DATA_NOTE,
            "optimizer": {"lr": RECIPE.lr, "momentum": RECIPE.momentum,
                          "weight_decay": RECIPE.weight_decay},
            "steps_timed": {MinicnnRunner.name: "fit's step: minicnn.training.train_step",
                            HandLoopRunner.name: HAND_LOOP},
            "cupy_tf32": os.environ.get("CUPY_TF32", "unset (CuPy's default: 0, TF32 off)"),
            "memory": "peak resident set (Linux VmHWM) of a child process per framework; "
                      "rss_increase = peak minus RSS after imports; gpu_pool = bytes held "
                      "by the CuPy pool / torch.cuda.max_memory_reserved"}


def _log(backend_name: str) -> Any:
    return lambda message: print(f"[{backend_name}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or with ``--sweep``, the batch-size sweep) for parsed ``args``; print
    the report; return the exit code: 0, or 2 for a usage error or when no backend asked for
    can run here."""
    allocator.keep_freed_memory()             # as the minicnn command does; see allocator.py
    try:
        backends, batches = _check(args)
    except ValueError as exc:
        print(f"minicnn bench: {exc}", file=sys.stderr)
        return 2
    unavailable = _unavailable(backends)
    measured = [b for b in backends if b not in unavailable]
    if not measured:                           # nothing to run: one line, as a usage error
        print(f"minicnn bench: {'; '.join(unavailable.values())}", file=sys.stderr)
        return 2
    for b, reason in unavailable.items():
        print(f"minicnn {b} is not measured here: {reason}")
    torch: Any = None
    if args.compare == "torch":
        try:
            import torch as torch_module
        except ImportError:
            print("PyTorch is not installed here: reporting minicnn alone.")
        else:
            torch = torch_module
            if args.torch_threads:
                torch.set_num_threads(args.torch_threads)
    previous = backend.get_backend()
    if getattr(args, "layers", None):
        try:
            per_layer = bench_layers.run_layers(args, measured, torch, _log)
        finally:
            backend.set_backend(previous)
        print(bench_layers.format_layers(per_layer, args))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"layers": per_layer, "unavailable": unavailable,
                           "machine": machine_info(measured, torch)}, f, indent=2)
        return 0
    try:
        if batches is not None:
            results = {b: bench_sweep.sweep_backend(b, batches, args, _log(b)) for b in measured}
        else:
            results = {b: bench_backend(b, args, torch) for b in measured}
        config = _config(args, backends, measured)
    finally:
        backend.set_backend(previous)
    report: dict[str, Any] = {"config": config, "compare": "torch" if torch is not None else None,
                              "machine": machine_info(measured, torch), "unavailable": unavailable}
    if batches is not None:
        report["sweep"] = {"batch_sizes": batches, "results": results, "unavailable": unavailable,
                           "crossover_batch": None,
                           "crossover": bench_sweep.crossover_line(results, unavailable)}
        if "numpy" in results and "cupy" in results:
            report["sweep"]["crossover_batch"] = bench_sweep.crossover(
                *(bench_sweep.step_times(results[b]) for b in ("numpy", "cupy")))
        print(bench_report.format_header(report, sweep=True))
        print(bench_sweep.format_sweep(report["sweep"]))
    else:
        report.update(results=results, speedup=None)
        if "numpy" in results and "cupy" in results:
            report["speedup"] = {name: _speedup(results["numpy"][name], results["cupy"][name])
                                 for name in ("minicnn", "torch")
                                 if name in results["numpy"] and name in results["cupy"]}
        print(bench_report.format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m minicnn.tools.bench [options]``; returns the exit code."""
    allocator.keep_freed_memory()             # before anything is timed or measured
    parser = argparse.ArgumentParser(prog="minicnn bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print(json.dumps(run_child(json.loads(args._child))))
        return 0
    return run(args)
