"""Clocks: runners timed in alternating blocks (``time_alternating``), and one replica's
step timed layer by layer (``layer_breakdown``). A device is synchronized before every read."""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from minicnn.core import modes
from minicnn.kernels import blas
from minicnn.layers import Layer
from minicnn.models import Model, Network
from minicnn.tools.bench.report import REWARM_SECONDS
from minicnn.tools.bench.runners import MinicnnRunner
from minicnn.training import parallel


def _timed(runner: Any, fn: Callable[..., Any], *args: Any, into: list[float]) -> Any:
    """``fn(*args)``, its seconds appended to ``into`` (the device synchronized around it)."""
    runner.sync()
    start = time.perf_counter()
    out = fn(*args)
    runner.sync()
    into.append(time.perf_counter() - start)
    return out


def _clock(runner: Any, fn: Callable[[], Any]) -> float:
    seconds: list[float] = []
    _timed(runner, fn, into=seconds)
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


Sample = dict[str, float]
"""One timed call, in seconds by kind: ``{"ms": s}`` for the wall clock (``wall_timer``), or
``{"host_ms": s, "device_ms": s}`` (``sweep.EventTimer``); the layer table's columns are named
after the keys (``forward_ms``, ``forward_host_ms``, ...), its figures in milliseconds."""
Timer = Callable[..., Any]
"""``timer(runner, fn, *args, into=samples)`` calls ``fn(*args)``, appends one ``Sample`` to
``samples`` and returns what ``fn`` returned."""


def wall_timer(runner: Any, fn: Callable[..., Any], *args: Any, into: list[Sample]) -> Any:
    """``fn(*args)`` timed by the wall clock, the device synchronized before each read."""
    seconds: list[float] = []
    out = _timed(runner, fn, *args, into=seconds)
    into.append({"ms": seconds[0]})
    return out


def graph_nodes(model: Network) -> tuple[list[Layer], list[list[int]]]:
    """The model's layers in the order they run, and for each the indices of the layers whose
    outputs it reads (-1: the model's input): a chain for a ``Sequential``, the graph for a
    ``Model``."""
    if isinstance(model, Model):
        index = {id(t): i for i, t in enumerate(model.order)}
        index[id(model.input_tensor)] = -1
        return [t.layer for t in model.order], [[index[id(p)] for p in t.parents]
                                                 for t in model.order]
    return list(model.layers), [[i - 1] for i in range(len(model.layers))]


def layer_breakdown(runner: MinicnnRunner, reps: int, timer: Timer = wall_timer
                    ) -> list[dict[str, Any]]:
    """Median milliseconds of each layer's forward and backward (and of the loss and the
    optimizer) over ``reps`` training steps timed piece by piece, like ``Sequential`` runs them.

    It times one replica's share the way a step runs it: the model's own layers on the first
    ceil(N / count) rows (count = ``parallel.split_count(model, x, model.workers)``), inside
    ``blas.single_threaded()`` when count > 1 (what each core does during a step; here the
    others idle). Forward runs in training mode inside ``modes.inside_model()`` (no NaN scan),
    each layer on the outputs it reads (``graph_nodes``); a layer's backward is
    ``layer.backward_step(g, input_grad)``, input_grad unless it reads only the model's input,
    with the gradients of an output read twice summed, as ``Model`` does; the loss runs on the
    share's logits, the optimizer on all parameters. Nothing is set on the model or its layers.
    ``timer`` times each piece (``wall_timer``: ``forward_ms``, ``backward_ms``, ``total_ms``
    per row; another timer's sample keys name other columns, see ``Sample``).
    """
    model, loss, opt = runner.model, runner.loss, runner.opt
    count = split_count(runner)
    share = -(-runner.x.shape[0] // count)
    x, y = runner.x[:share], runner.y[:share]
    layers, reads = graph_nodes(model)
    fwd: list[list[Sample]] = [[] for _ in layers]
    bwd: list[list[Sample]] = [[] for _ in layers]
    loss_t: list[Sample] = []
    opt_t: list[Sample] = []
    single = blas.single_threaded() if count > 1 else contextlib.nullcontext()
    with single, modes.training_mode(True):
        for _ in range(reps):
            timer(runner, opt.zero_grad, into=opt_t)
            values: list[Any] = []
            with modes.inside_model():
                for i, layer in enumerate(layers):
                    inputs = [x if j < 0 else values[j] for j in reads[i]]
                    values.append(timer(runner, layer.forward, *inputs, into=fwd[i]))
            def loss_step(h: Any = values[-1]) -> Any:
                loss.forward(h, y)
                return loss.backward()
            grads: dict[int, Any] = {len(layers) - 1: timer(runner, loss_step, into=loss_t)}
            for i in reversed(range(len(layers))):
                if i not in grads:                   # an output nothing downstream uses
                    continue
                needed = any(j >= 0 for j in reads[i])
                out = timer(runner, layers[i].backward_step, grads.pop(i), needed, into=bwd[i])
                for j, g in zip(reads[i], out if isinstance(out, tuple) else (out,)):
                    if j >= 0 and g is not None:
                        grads[j] = g if j not in grads else grads[j] + g
            zero_grad = opt_t.pop()
            timer(runner, opt.step, into=opt_t)
            opt_t[-1] = {k: v + zero_grad[k] for k, v in opt_t[-1].items()}
    kinds = list(opt_t[0])

    def ms(samples: list[Sample] | None, part: str) -> dict[str, float]:
        return {f"{part}_{k}": 0.0 if samples is None else
                1000 * statistics.median(s[k] for s in samples) for k in kinds}

    rows: list[dict[str, Any]] = [
        {"name": layer.name, "type": type(layer).__name__, **ms(f, "forward"),
         **ms(b, "backward")} for layer, f, b in zip(layers, fwd, bwd)]
    rows.append({"name": "loss", "type": type(loss).__name__, **ms(loss_t, "forward"),
                 **ms(None, "backward")})
    rows.append({"name": "optimizer", "type": "SGD zero_grad+step", **ms(None, "forward"),
                 **ms(opt_t, "backward")})
    for row in rows:
        row.update({f"total_{k}": row[f"forward_{k}"] + row[f"backward_{k}"] for k in kinds})
    return rows
