"""``minicnn bench``: how fast the reference CNN trains and infers, per backend, against PyTorch.

What is measured, for each backend (``--backend numpy``, ``--backend cupy``, or both):

* **training**: on one fixed batch, ``--steps`` timed steps after ``--warmup``, of fit's step
  (``minicnn.train.train_step``) and of the README's hand-written loop (``HAND_LOOP``) on the
  same model, which should be as fast (the model splits each batch among replicas by itself,
  ``minicnn.parallel``); the figure is the **median** seconds per step, from which seconds per
  epoch (ceil(60,000 / batch) steps) and training images/s follow;
* **inference**: forward only in eval mode on a batch of ``--infer-batch-size`` (1000) images,
  median of ``--infer-steps`` passes after one warm-up pass;
* **per layer**: each layer's forward and backward timed on its own, in sequence, on one
  replica's share of the batch (``layer_breakdown``);
* **memory**: peak resident set (Linux ``VmHWM``) of a *separate child process* per framework
  running 3 training steps, or 2 inference passes, and that peak minus its resident set after
  the imports; on a GPU, the framework's caching allocator (CuPy pool, ``max_memory_reserved``).

``--compare torch`` builds the identical model in PyTorch (weights copied from minicnn, same
SGD and loss). The runners alternate in blocks of 5 steps in one run, so machine noise hits all
(``time_alternating``); minicnn/PyTorch is reported for every figure, hand loop/PyTorch for
training. GPU timings synchronize before reading the clock. Inputs are random N(0, 1) images
with random labels, from a fixed seed. PyTorch is optional: imported only for ``--compare
torch``. Like the ``minicnn`` command, ``main`` and ``run`` call
``minicnn.allocator.keep_freed_memory()`` first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy

import minicnn
from minicnn import zoo
from minicnn.core import backend, modes
from minicnn.kernels import allocator, blas
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.tools.bench import report as bench_report
from minicnn.tools.bench.report import EPOCH_IMAGES, HAND_LOOP_KEY, REWARM_SECONDS
from minicnn.training import loop as train
from minicnn.training import losses, parallel
from minicnn.training import optimizers as optim

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
MODELS = ("ref-cnn",)                   # built by minicnn.zoo, with --width-mult
MEMORY_TRAIN_STEPS, MEMORY_INFER_PASSES = 3, 2
MAX_LAYER_STEPS = 10
DATA_NOTE = "random N(0, 1) images (N, 1, 28, 28) with random labels 0-9"
HAND_LOOP = ("opt.zero_grad(); logits = model.forward(x, training=True); "
             "loss.forward(logits, labels); model.backward(loss.backward()); opt.step()")


# --- the model, the data and the same model in PyTorch ------------------------------------------
def make_batch(batch_size: int, seed: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Random N(0, 1) float32 images (batch, 1, 28, 28) and int64 labels in [0, 10)."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 1, 28, 28), dtype=numpy.float32)
    return x, rng.integers(0, 10, size=batch_size, dtype=numpy.int64)


def torch_model_from(model: Sequential, torch: Any = None) -> Any:
    """A ``torch.nn.Sequential`` computing exactly what ``model`` computes, weights copied.

    Conv2D weights are (O, C, kh, kw) in both frameworks; a minicnn Dense weight is
    (in, out) and a torch Linear weight (out, in), so it is transposed.
    """
    if torch is None:
        import torch
    nn = torch.nn

    def tensor(a: Any) -> Any:
        return torch.from_numpy(numpy.ascontiguousarray(backend.to_numpy(a)))

    modules = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                          layer.padding, layer.dilation, bias=layer.bias is not None)
            weights = [(m.weight, layer.weight.data)]
        elif isinstance(layer, Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            weights = [(m.weight, layer.weight.data.T)]
        elif isinstance(layer, MaxPool2D):
            m, weights = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding), []
        elif isinstance(layer, (ReLU, Flatten)):
            m, weights = (nn.ReLU() if isinstance(layer, ReLU) else nn.Flatten()), []
        else:
            raise ValueError(f"bench: no PyTorch equivalent for {layer!r}")
        if getattr(layer, "bias", None) is not None:
            weights.append((m.bias, layer.bias.data))
        with torch.no_grad():
            for target, source in weights:
                target.copy_(tensor(source))
        modules.append(m)
        activation = getattr(layer, "activation", None)
        if activation is not None:
            if not isinstance(activation, ReLU):
                raise ValueError(f"bench: no PyTorch equivalent for activation {activation!r}")
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


# --- one framework's training step and inference pass ------------------------------------------
class MinicnnRunner:
    """minicnn on the active backend: fit's training step and the inference pass being timed."""

    name = "minicnn"

    def __init__(self, model: Sequential, x: Any, y: Any, xi: Any = None):
        self.model = model
        self.loss = losses.SoftmaxCrossEntropy()
        self.opt = optim.SGD(model.parameters(), LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.x, self.y, self.xi = (None if a is None else backend.to_backend(a) for a in (x, y, xi))

    def sync(self) -> None:
        backend.synchronize()

    def train_step(self) -> None:
        train.train_step(self.model, self.loss, self.opt, self.x, self.y)     # fit's step

    def infer(self) -> Any:
        with minicnn.no_grad():
            return self.model.forward(self.xi, training=False, check=False)


class HandLoopRunner(MinicnnRunner):
    """The training loop the README writes out by hand (its own optimizer, the same model)."""

    name = HAND_LOOP_KEY

    def train_step(self) -> None:
        model, opt, loss, x, labels = self.model, self.opt, self.loss, self.x, self.y
        opt.zero_grad()
        logits = model.forward(x, training=True)
        loss.forward(logits, labels)
        model.backward(loss.backward())
        opt.step()


class TorchRunner:
    """The same model, data and optimizer in PyTorch on ``device`` ('cpu' or 'cuda')."""

    name = "torch"

    def __init__(self, torch: Any, model: Sequential, device: str, x: Any, y: Any, xi: Any = None):
        self.torch, self.device = torch, device
        self.net = torch_model_from(model, torch).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM,
                                   weight_decay=WEIGHT_DECAY)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x, self.y, self.xi = (None if a is None else torch.from_numpy(a).to(device)
                                   for a in (x, y, xi))

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad()
        self.loss(self.net(self.x), self.y).backward()
        self.opt.step()

    def infer(self) -> Any:
        self.net.eval()
        with self.torch.no_grad():
            return self.net(self.xi)


def _timed(runner: Any, fn: Callable[..., Any], *args: Any, into: list[float]) -> Any:
    """``fn(*args)``, its seconds appended to ``into`` (the device synchronized around it)."""
    runner.sync()
    start = time.perf_counter()
    out = fn(*args)
    runner.sync()
    into.append(time.perf_counter() - start)
    return out


def _clock(runner: Any, fn: Callable[[], Any]) -> float:
    _timed(runner, fn, into=(seconds := []))
    return seconds[0]




def time_alternating(runners: Sequence[Any], method: str, warmup: int, reps: int,
                     pause: float = 0.0, block: int = 5) -> list[list[float]]:
    """Seconds per call of ``method`` for each runner: ``reps`` timed calls each, after
    ``warmup`` untimed ones. Several runners take turns in blocks of ``block`` timed calls (the
    order flips every round), so machine noise hits all of them. Each turn starts with ``pause``
    idle seconds, as BLAS and OpenMP worker threads busy-wait for a while after their work
    (OpenBLAS for about 0.1 s) and would slow the next runner's turn, then ``REWARM_SECONDS`` of
    untimed calls that wake the turn's own workers, caches and CPUs, as in a real training run.
    """
    times: list[list[float]] = [[] for _ in runners]
    for runner in runners:
        for _ in range(warmup):
            _clock(runner, getattr(runner, method))
    rounds = 0
    while any(len(t) < reps for t in times):
        order = list(enumerate(runners))
        for k, runner in (order if rounds % 2 == 0 else order[::-1]):
            if len(runners) > 1:
                time.sleep(pause)
                warm_until = time.perf_counter() + REWARM_SECONDS
                _clock(runner, getattr(runner, method))
                while time.perf_counter() < warm_until:
                    _clock(runner, getattr(runner, method))
            for _ in range(min(block, reps - len(times[k]))):
                times[k].append(_clock(runner, getattr(runner, method)))
        rounds += 1
    return times


def split_count(runner: MinicnnRunner) -> int:
    """How many replicas the model splits the runner's training batch among (1: none)."""
    return parallel.split_count(runner.model, runner.x, getattr(runner.model, "workers", None))


def layer_breakdown(runner: MinicnnRunner, reps: int) -> list[dict[str, Any]]:
    """Median milliseconds of each layer's forward and backward (and of the loss and the
    optimizer) over ``reps`` training steps timed piece by piece, like ``Sequential`` runs them.

    It times one replica's share the way a step runs it: the model's own layers on the first
    ceil(N / count) rows (count = ``parallel.split_count(model, x, model.workers)``), inside
    ``blas.single_threaded()`` when count > 1 (what each core does during a step; here the
    others idle). Forward runs in training mode inside ``modes.inside_model()`` (no NaN scan),
    layer i's backward is ``layer.backward_step(g, input_grad=(i > 0))``; the loss runs on the
    share's logits, the optimizer on all parameters. Nothing is set on the model or its layers.
    """
    model, loss, opt = runner.model, runner.loss, runner.opt
    count = split_count(runner)
    share = -(-runner.x.shape[0] // count)
    x, y = runner.x[:share], runner.y[:share]
    layers = model.layers
    fwd: list[list[float]] = [[] for _ in layers]
    bwd: list[list[float]] = [[] for _ in layers]
    loss_t, opt_t = [], []
    single = blas.single_threaded() if count > 1 else contextlib.nullcontext()
    with single, modes.training_mode(True):
        for _ in range(reps):
            opt_t.append(_clock(runner, opt.zero_grad))
            h = x
            with modes.inside_model():
                for i, layer in enumerate(layers):
                    h = _timed(runner, layer.forward, h, into=fwd[i])
            g = _timed(runner, lambda: (loss.forward(h, y), loss.backward())[1], into=loss_t)
            for i in reversed(range(len(layers))):
                g = _timed(runner, layers[i].backward_step, g, i > 0, into=bwd[i])
            opt_t[-1] += _clock(runner, opt.step)

    def ms(seconds: list[float]) -> float:
        return 1000 * statistics.median(seconds)

    rows = [{"name": layer.name, "type": type(layer).__name__, "forward_ms": ms(f),
             "backward_ms": ms(b)} for layer, f, b in zip(layers, fwd, bwd)]
    rows.append({"name": "loss", "type": "SoftmaxCrossEntropy", "forward_ms": ms(loss_t),
                 "backward_ms": 0.0})
    rows.append({"name": "optimizer", "type": "SGD zero_grad+step", "forward_ms": 0.0,
                 "backward_ms": ms(opt_t)})
    for row in rows:
        row["total_ms"] = row["forward_ms"] + row["backward_ms"]
    return rows


# --- memory, in a child process per framework ---------------------------------------------------
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


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: import one framework, run a few steps, report peak memory."""
    torch = None
    if spec["framework"] == "torch":
        import torch
        if spec.get("torch_threads"):
            torch.set_num_threads(spec["torch_threads"])
    elif spec["backend"] != "numpy":
        backend.set_backend(spec["backend"])
    base = _proc_status_mib("VmRSS") or peak_rss_mib()
    minicnn.manual_seed(spec["seed"])
    model = zoo.build_model(spec["model"], width_mult=spec["width_mult"])
    training = spec["mode"] == "train"
    x, y = make_batch(spec["batch_size"], spec["seed"]) if training else (None, None)
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
    def log(message: str) -> None:
        print(f"[{backend_name}] {message}", file=sys.stderr, flush=True)

    backend.set_backend(backend_name)
    minicnn.manual_seed(args.seed)
    model = zoo.build_model(args.model, width_mult=args.width_mult)
    x, y = make_batch(args.batch_size, args.seed)
    xi, _ = make_batch(args.infer_batch_size, args.seed + 1)
    runners: list[Any] = [MinicnnRunner(model, x, y, xi), HandLoopRunner(model, x, y)]
    device = "cuda" if backend_name == "cupy" else "cpu"
    if torch is not None:
        if device == "cuda" and not torch.cuda.is_available():
            print("PyTorch has no CUDA device here: reporting minicnn alone on cupy.")
        else:
            runners.append(TorchRunner(torch, model, device, x, y, xi))  # same initial weights
    log(f"timing {args.steps} training steps after {args.warmup} warm-up "
        f"({', '.join(r.name for r in runners)})")
    train_s = time_alternating(runners, "train_step", args.warmup, args.steps, args.pause)
    log("timing each layer")
    layers = layer_breakdown(runners[0], max(1, min(args.steps, MAX_LAYER_STEPS)))
    log(f"timing {args.infer_steps} inference passes of {args.infer_batch_size} images")
    inferring = [r for r in runners if not isinstance(r, HandLoopRunner)]  # same as fit's
    infer_s = dict(zip((r.name for r in inferring),
                       time_alternating(inferring, "infer", 1, args.infer_steps, args.pause)))
    result: dict[str, Any] = {"layers": layers}
    for runner, t_s in zip(runners, train_s):
        figures = result[runner.name] = _train_figures(t_s, args.batch_size)
        if isinstance(runner, HandLoopRunner):
            continue
        figures.update(_infer_figures(infer_s[runner.name], args.infer_batch_size))
        log(f"measuring {runner.name} memory in child processes")
        _add_memory(figures, runner.name, backend_name, args)
        if isinstance(runner, TorchRunner):
            figures.update(device=device, threads=torch.get_num_threads())
        else:
            figures["workers"] = split_count(runner)
    hand, fit = result[HandLoopRunner.name], result[MinicnnRunner.name]
    result["hand_loop_vs_fit_step"] = _ratios(hand, fit, TRAIN_KEYS)
    if "torch" in result:
        result["ratio"] = {"fit step": _ratios(fit, result["torch"]),
                           "hand loop": _ratios(hand, result["torch"], TRAIN_KEYS)}
    return result


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
                        help="multiply the conv channel counts 32/64 by K (default 1)")
    parser.add_argument("--model", choices=MODELS, default="ref-cnn")
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


def _backend_list(args: argparse.Namespace) -> list[str]:
    names = list(args.backend or [])
    if args.backends:
        names += [b.strip().lower() for b in args.backends.split(",") if b.strip()]
    for b in names:
        if b not in backend.BACKENDS:
            raise ValueError(f"unknown backend {b!r}: expected "
                             f"{' or '.join(backend.BACKENDS)}")
    return list(dict.fromkeys(names)) or ["numpy"]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed ``args``; print the report; return the exit code."""
    allocator.keep_freed_memory()             # as the minicnn command does; see allocator.py
    try:
        backends = _backend_list(args)
        for key in ("steps", "batch_size", "infer_batch_size", "infer_steps", "width_mult"):
            if getattr(args, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1")
        if args.warmup < 0 or args.pause < 0:
            raise ValueError("--warmup and --pause must be >= 0")
        for b in backends:
            backend.get_module(b)              # fail now, in one line, if cupy cannot run
    except (ValueError, minicnn.BackendError) as exc:
        print(f"minicnn bench: {exc}", file=sys.stderr)
        return 2
    torch = None
    if args.compare == "torch":
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed here: reporting minicnn alone.")
        else:
            if args.torch_threads:
                torch.set_num_threads(args.torch_threads)
    previous = backend.get_backend()
    try:
        results = {b: bench_backend(b, args, torch) for b in backends}
        params = sum(p.size for p in
                     zoo.build_model(args.model, width_mult=args.width_mult).parameters())
    finally:
        backend.set_backend(previous)
    report: dict[str, Any] = {
        "config": {"model": args.model, "width_mult": args.width_mult, "params": params,
                   "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                   "infer_batch_size": args.infer_batch_size, "infer_steps": args.infer_steps,
                   "seed": args.seed, "pause_s": args.pause, "backends": backends,
                   "data": DATA_NOTE,
                   "optimizer": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
                   "steps_timed": {MinicnnRunner.name: "fit's step: minicnn.train.train_step",
                                   HandLoopRunner.name: HAND_LOOP},
                   "memory": "peak resident set (Linux VmHWM) of a child process per framework; "
                             "rss_increase = peak minus RSS after imports; gpu_pool = bytes held "
                             "by the CuPy pool / torch.cuda.max_memory_reserved"},
        "compare": "torch" if torch is not None else None,
        "machine": machine_info(backends, torch), "results": results, "speedup": None}
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
        print(json.dumps(_child(json.loads(args._child))))
        return 0
    return run(args)


