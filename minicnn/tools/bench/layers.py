"""``minicnn bench --layers [NAMES]``: each layer of ``layer_cases.CASES`` against PyTorch.

For each case and backend, minicnn runs the layer as a one-layer ``Sequential`` (so it splits
the batch among cores as any model does; ``input_grad=True``, so dL/dx is computed as PyTorch
computes ``x.grad``), and PyTorch runs the case's function with the same weights, input and
output gradient. Timed, alternating in blocks as the model bench does (``time_alternating``):

* **step**: forward in training mode plus backward (input and parameter gradients);
* **forward**: the forward alone inside ``no_grad`` (``torch.no_grad``), still in training
  mode so both compute the same thing (batch statistics for BatchNorm).

The report gives median milliseconds and minicnn/PyTorch per case, and whether the case meets
its target ratio. A case whose layer or option minicnn does not have (yet) is reported as not
measured, with the reason, and the others run. Without ``--compare torch`` (or without PyTorch)
minicnn's times are reported alone.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
from typing import Any

import numpy

import minicnn
from minicnn.core import backend, modes
from minicnn.models import Sequential
from minicnn.tools.bench.layer_cases import LayerCase, find_cases
from minicnn.tools.bench.report import table
from minicnn.tools.bench.timing import time_alternating


class LayerRunner:
    """minicnn: the case's layer in a one-layer Sequential on the active backend."""

    name = "minicnn"

    def __init__(self, case: LayerCase, seed: int):
        cls = getattr(importlib.import_module(case.module), case.cls)
        minicnn.manual_seed(seed)
        self.layer = cls(*case.args, **case.kwargs)
        self.model = Sequential([self.layer], input_shape=case.shape[1:])
        rng = numpy.random.default_rng(seed)
        self.x_host = rng.standard_normal(case.shape, dtype=numpy.float32)
        self.x = backend.to_backend(self.x_host)
        with modes.no_grad():
            out_shape = self.model.forward(self.x, training=True).shape
        self.dy_host = rng.standard_normal(out_shape, dtype=numpy.float32)
        self.dy = backend.to_backend(self.dy_host)

    def sync(self) -> None:
        backend.synchronize()

    def step(self) -> None:
        self.model.forward(self.x, training=True, check=False)     # as fit's step: no NaN scan
        self.model.backward(self.dy, input_grad=True)

    def forward(self) -> None:
        with modes.no_grad():
            self.model.forward(self.x, training=True, check=False)


class TorchLayerRunner:
    """PyTorch: the case's function on the same input, weights and output gradient."""

    name = "torch"

    def __init__(self, torch: Any, case: LayerCase, twin: LayerRunner, device: str):
        self.torch, self.device, self.fn = torch, device, case.torch_fn
        self.F = torch.nn.functional

        def tensor(a: Any, grad: bool = False) -> Any:
            t = torch.from_numpy(numpy.ascontiguousarray(backend.to_numpy(a))).to(device)
            return t.requires_grad_(grad)
        self.params = {name: tensor(p.data, True) for name, p in twin.layer.named_parameters()}
        self.x, self.dy = tensor(twin.x_host, True), tensor(twin.dy_host)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def step(self) -> None:
        self.x.grad = None
        for p in self.params.values():
            p.grad = None
        self.fn(self.F, self.x, self.params).backward(self.dy)

    def forward(self) -> None:
        with self.torch.no_grad():
            self.fn(self.F, self.x, self.params)


def bench_case(case: LayerCase, args: argparse.Namespace, torch: Any, backend_name: str
               ) -> dict[str, Any]:
    """Median ms of step and forward for minicnn (and PyTorch), their ratios; or the reason
    the case could not run (``{"unavailable": why}``)."""
    try:
        mine = LayerRunner(case, args.seed)
    except Exception as exc:               # a layer or option minicnn lacks: say which
        return {"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    runners: list[Any] = [mine]
    device = "cuda" if backend_name == "cupy" else "cpu"
    if torch is not None and (device == "cpu" or torch.cuda.is_available()):
        runners.append(TorchLayerRunner(torch, case, mine, device))
    result: dict[str, Any] = {"shape": list(case.shape), "target": case.target}
    for method in ("step", "forward"):
        times = time_alternating(runners, method, args.warmup, args.steps, args.pause)
        for runner, seconds in zip(runners, times):
            result[f"{runner.name}_{method}_ms"] = 1000 * statistics.median(seconds)
        if len(runners) > 1:
            result[f"{method}_ratio"] = result[f"minicnn_{method}_ms"] / \
                result[f"torch_{method}_ms"]
    if "step_ratio" in result:
        result["meets_target"] = result["step_ratio"] <= case.target
    return result


def run_layers(args: argparse.Namespace, backends: list[str], torch: Any,
               log: Any) -> dict[str, Any]:
    """Every case asked for (``args.layers``) on each backend: {backend: {case: figures}}."""
    cases = find_cases(None if args.layers is True else args.layers)
    results: dict[str, Any] = {}
    for b in backends:
        backend.set_backend(b)
        results[b] = {}
        for case in cases:
            log(b)(f"{case.name}: {case.cls}{case.args} on {case.shape}")
            results[b][case.name] = bench_case(case, args, torch, b)
    return results


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def format_layers(results: dict[str, Any], args: argparse.Namespace) -> str:
    """One table per backend: case, input shape, medians (ms), minicnn/PyTorch, target."""
    out = [f"per layer: one-layer Sequential (the batch split among cores as in any model), "
           f"float32, median of {args.steps} calls after {args.warmup} warm-up; step = forward "
           "(training mode) + backward with dL/dx; forward = inside no_grad; minicnn and PyTorch "
           "alternate in blocks of 5 calls"]
    for b, cases in results.items():
        rows, missing = [], []
        for name, r in cases.items():
            if "unavailable" in r:
                missing.append(f"  {name}: not measured: {r['unavailable']}")
                continue
            ratio = r.get("step_ratio")
            verdict = "" if ratio is None else ("ok" if r["meets_target"] else "SLOWER")
            rows.append([name, "x".join(map(str, r["shape"])), _ms(r["minicnn_step_ms"]),
                         _ms(r.get("torch_step_ms")),
                         "" if ratio is None else f"{ratio:.2f}x",
                         _ms(r["minicnn_forward_ms"]), _ms(r.get("torch_forward_ms")),
                         "" if r.get("forward_ratio") is None else f"{r['forward_ratio']:.2f}x",
                         f"<= {r['target']}x", verdict])
        out += ["", f"minicnn {b}:",
                table(["layer", "input", "step ms", "PyTorch", "ratio", "forward ms",
                       "PyTorch", "ratio", "target", ""], rows)] + missing
    return "\n".join(out)
