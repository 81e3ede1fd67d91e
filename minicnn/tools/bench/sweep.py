"""``minicnn bench --sweep batch=1,8,32,128,512``: where the GPU starts to pay off.

For each backend and each batch size, fit's training step on the reference CNN (``--width-mult``
widens it) is timed as in the bench (median of ``--steps`` after ``--warmup``, the device
synchronized before every clock read), giving seconds per step and training images/s. From the
two backends' step times follows one line: "CuPy is faster than NumPy from batch N" (the
smallest batch tried from which on CuPy's step is the faster one at every larger batch tried).

Each layer's forward and backward are also timed on their own (``timing.layer_breakdown``). On
CuPy every piece gets two figures (``EventTimer``): **host** time, the wall clock of the call
without synchronizing (Python, argument checks and kernel launches: what the CPU spends), and
**device** time, between two CUDA events recorded on the current stream before and after the
call (what the GPU takes from the first kernel's start to the last one's end, idle gaps
included). A layer whose device time is close to its host time kept the GPU waiting for its
launches (launch-bound); a call that reads a result back to the host waits for the GPU, and its
host time includes that wait. NumPy computes on the host, synchronously: there the split does
not apply and each piece has its wall-clock time only.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import minicnn
from minicnn.core import backend
from minicnn.tools.bench.report import table
from minicnn.tools.bench.runners import MinicnnRunner, bench_model, image_to_image, make_batch
from minicnn.tools.bench.timing import (
    Sample,
    Timer,
    layer_breakdown,
    split_count,
    time_alternating,
    wall_timer,
)

LAYER_STEPS = 5
"""Steps over which each layer is timed (at most; ``--steps`` if fewer)."""
NOT_APPLICABLE = ("host/device split not applicable on NumPy: it computes on the host, "
                  "synchronously; each figure is wall-clock time")
SPLIT = ("host = wall clock of the call without synchronizing (Python and kernel launches); "
         "device = CUDA events recorded before and after it on the current stream")


def parse_sweep(spec: str) -> list[int]:
    """The batch sizes of ``batch=B1,B2,...``, ascending and without repeats; ValueError
    naming the problem otherwise."""
    key, sep, values = spec.partition("=")
    if key.strip() != "batch" or not sep:
        raise ValueError(f"--sweep {spec!r}: expected batch=B1,B2,... (e.g. batch=1,8,32,128)")
    try:
        batches = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {spec!r}: batch sizes must be whole numbers") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--sweep {spec!r}: give one or more batch sizes >= 1")
    return sorted(set(batches))


class EventTimer:
    """A ``timing.Timer`` giving host and device seconds per call (``{"host_ms", "device_ms"}``)
    with CUDA events of ``cupy`` (``cupy.cuda.Event``; only ``cuda.Event`` and
    ``cuda.get_elapsed_time`` are used, so tests can pass a stand-in)."""

    def __init__(self, cupy: Any):
        self.cupy = cupy

    def __call__(self, runner: Any, fn: Callable[..., Any], *args: Any,
                 into: list[Sample]) -> Any:
        cuda = self.cupy.cuda
        runner.sync()                          # earlier work does not count against this call
        start, end = cuda.Event(), cuda.Event()
        start.record()
        t0 = time.perf_counter()
        out = fn(*args)
        host = time.perf_counter() - t0        # no synchronize: what the host spent
        end.record()
        end.synchronize()
        into.append({"host_ms": host, "device_ms": cuda.get_elapsed_time(start, end) / 1000})
        return out


def sweep_backend(backend_name: str, batches: Sequence[int], args: argparse.Namespace,
                  log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """One backend's sweep: for each batch size, fit's step (median seconds, images/s) on a
    freshly built model, and its layers (host and device ms on CuPy, wall ms on NumPy)."""
    backend.set_backend(backend_name)
    timer: Timer = EventTimer(backend.xp) if backend_name == "cupy" else wall_timer
    rows = []
    for batch in batches:
        log(f"batch {batch}: {args.steps} steps after {args.warmup} warm-up, then each layer")
        minicnn.manual_seed(args.seed)
        model = bench_model(args.model, args.width_mult)
        x, y = make_batch(batch, args.seed, image_to_image(model))
        runner = MinicnnRunner(model, x, y)
        (step_s,) = time_alternating([runner], "train_step", args.warmup, args.steps)
        step = statistics.median(step_s)
        rows.append({"batch_size": batch, "step_s_median": step, "step_s": step_s,
                     "train_img_s": batch / step, "workers": split_count(runner),
                     "layers": layer_breakdown(runner, max(1, min(args.steps, LAYER_STEPS)),
                                               timer)})
    return {"batches": rows, "layer_split": SPLIT if backend_name == "cupy" else NOT_APPLICABLE}


def crossover(numpy_step: Mapping[int, float], cupy_step: Mapping[int, float]) -> int | None:
    """The smallest batch size from which on CuPy's step time is below NumPy's at every larger
    batch size both have; None when CuPy is not faster at the largest one."""
    found = None
    for batch in sorted(set(numpy_step) & set(cupy_step), reverse=True):
        if cupy_step[batch] >= numpy_step[batch]:
            break
        found = batch
    return found


def step_times(result: Mapping[str, Any]) -> dict[int, float]:
    """{batch size: median seconds per step} of one backend's sweep (``sweep_backend``'s)."""
    return {row["batch_size"]: row["step_s_median"] for row in result["batches"]}


def crossover_line(results: Mapping[str, Any], unavailable: Mapping[str, str]) -> str:
    """The sweep's verdict in one line, from the backends' results (``sweep_backend``'s) and
    the reasons of those that could not run."""
    if "cupy" not in results:
        why = unavailable.get("cupy", "not requested (--backends numpy,cupy measures both)")
        return f"CuPy was not measured: {why}"
    if "numpy" not in results:
        why = unavailable.get("numpy", "not requested (--backends numpy,cupy measures both)")
        return f"NumPy was not measured: {why}; no crossover to report"
    cpu, gpu = step_times(results["numpy"]), step_times(results["cupy"])
    batch = crossover(cpu, gpu)
    if batch is not None:
        return f"CuPy is faster than NumPy from batch {batch}"
    faster = [b for b in sorted(set(cpu) & set(gpu)) if gpu[b] < cpu[b]]
    if faster:
        return (f"CuPy is faster than NumPy at batch {', '.join(map(str, faster))} only, "
                f"not at the largest batch tried ({max(set(cpu) & set(gpu))})")
    return "CuPy is faster than NumPy at no batch tried"


def format_sweep(sweep: Mapping[str, Any]) -> str:
    """The sweep's report: per backend, step time and images/s per batch size; the crossover
    line; per backend, each layer's forward + backward per batch size (host and device ms on
    CuPy; on NumPy the note that the split does not apply)."""
    results = sweep["results"]
    out = []
    for name, reason in sweep["unavailable"].items():
        out.append(f"minicnn {name}: not measured: {reason}")
    for name, result in results.items():
        rows = [[str(r["batch_size"]), f"{1000 * r['step_s_median']:.3f}",
                 f"{r['train_img_s']:,.0f}"] for r in result["batches"]]
        out += ["", f"minicnn {name}, fit's training step per batch size:",
                table(["batch", "step ms (median)", "training images/s"], rows)]
    out += ["", sweep["crossover"]]
    for name, result in results.items():
        batches = result["batches"]
        split = name == "cupy"
        kinds = ("host_ms", "device_ms") if split else ("ms",)
        header = ["layer"] + [f"b={r['batch_size']} {k.removesuffix('_ms') if split else 'ms'}"
                              for r in batches for k in kinds]
        rows = [[f"{layer['name']} ({layer['type']})"]
                + [f"{r['layers'][i][f'total_{k}']:.3f}" for r in batches for k in kinds]
                for i, layer in enumerate(batches[0]["layers"])]
        out += ["", f"minicnn {name}, per layer: median ms of forward + backward, each layer "
                f"timed alone on one replica's share of the batch; {result['layer_split']}:",
                table(header, rows)]
    return "\n".join(out)
