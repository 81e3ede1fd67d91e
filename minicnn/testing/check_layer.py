"""``check_layer(layer, input_shape)``: every rule of the layer contract, checked in one call.

Modelled on Keras's ``run_layer_test``. On a float64 copy of the layer (the layer itself is left
as it was) it checks, in this order, and raises ``LayerContractError`` naming the first rule
that fails (``check_layer(Scale): rule 'accumulate gradients': ...``):

* ``forward``: forward runs on random float64 input of ``input_shape`` (batch axis included; a
  list of shapes for a layer with several inputs);
* ``output shape``: ``output_shape`` of the per-sample input shape(s) is the shape forward gave;
* ``accumulate gradients``: a second backward without ``zero_grad`` doubles every gradient
  (``+=``, never ``=``);
* ``gradients``: ``gradcheck``, central differences in float64;
* ``no saved values after no_grad``: a forward inside ``no_grad()`` keeps nothing;
* ``config round trip``: ``layer_from_config(layer_config(layer))`` through JSON rebuilds the
  same class with the same config;
* ``checkpoint round trip``: after training-mode forwards (which move running statistics), a
  rebuilt layer given the parameters and state (``named_state``) by name computes the same
  eval-mode output, as a checkpoint saved and loaded would;
* ``split``: when the layer declares ``per_sample = True``, the whole batch's eval-mode output
  equals the outputs of its halves put together;
* ``batch sums``: when the layer declares ``batch_sums = True``, its training-mode output and
  gradients for the whole batch equal those of two copies run on its halves in two threads,
  their ``batch_sum`` calls adding over both (``minicnn.core.batch_sum``);
* ``deepcopy and pickle``: copies compute the same, own their parameters and hold no saved values.
"""
from __future__ import annotations

import contextvars
import copy
import json
import pickle
import threading
from collections.abc import Sequence
from typing import Any, cast

from minicnn.core import backend, modes, random
from minicnn.core.batch_sum import ReplicaGroup, replica_scope
from minicnn.layers.base import Layer, layer_config, layer_from_config
from minicnn.testing.gradient_check import GradientCheckError, gradcheck

__all__ = ["LayerContractError", "check_layer"]


class LayerContractError(AssertionError):
    """A layer breaks a rule of the layer contract; the message names the layer and the rule."""


def _shapes(input_shape: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    if isinstance(input_shape[0], int):
        return [tuple(cast("Sequence[int]", input_shape))]
    return [tuple(s) for s in cast("Sequence[Sequence[int]]", input_shape)]


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def check_layer(layer: Layer, input_shape: Sequence[int] | Sequence[Sequence[int]],
                seed: int = 0, tol: float = 1e-6) -> None:
    """Check ``layer`` against every rule of the layer contract (see the module docstring);
    raise ``LayerContractError`` naming the first rule broken. ``input_shape`` includes the
    batch axis (at least 2 samples for the split rule), e.g. (4, 3, 8, 8)."""
    who = f"check_layer({type(layer).__name__})"

    def fail(rule: str, why: str) -> LayerContractError:
        return LayerContractError(f"{who}: rule '{rule}': {' '.join(why.split())}")  # one line

    shapes = _shapes(input_shape)
    work = copy.deepcopy(layer).astype(backend.xp.float64)
    params = work.parameters()
    xp = backend.get_array_module(params[0].data) if params else backend.xp
    gen = random.generator(seed + 1)          # not gradcheck's draws (its projection)
    xs = [xp.asarray(gen.standard_normal(s)) for s in shapes]
    rng_state = random.get_rng_state()

    def run(target: Layer, inputs: Sequence[Any], training: bool = True) -> Any:
        random.set_rng_state(rng_state)                     # the same dropout masks each time
        with modes.training_mode(training):
            return target.forward(*inputs)

    try:
        try:
            y = run(work, xs)
        except Exception as exc:
            raise fail("forward", f"forward on input shape(s) {shapes} raised "
                       f"{type(exc).__name__}: {exc}") from exc
        declared = work.output_shape(*(s[1:] for s in shapes))
        if tuple(declared) != tuple(y.shape[1:]):
            raise fail("output shape", f"output_shape{tuple(s[1:] for s in shapes)} says "
                       f"{tuple(declared)}, forward gave {tuple(y.shape[1:])} per sample "
                       "(implement output_shape(input_shape) for a layer that changes shape)")
        _check_accumulation(work, xs, y, run, gen, fail)
        try:
            gradcheck(work, [s for s in shapes], inputs=xs, seed=seed, tol=tol)
        except GradientCheckError as exc:
            raise fail("gradients", str(exc)) from None
        work.clear_cache()
        with modes.no_grad():
            run(work, xs)
        kept = [path or "the layer" for path, sub in work.named_layers()
                if sub.__dict__.get("_saved") is not None]
        if kept:
            raise fail("no saved values after no_grad", f"forward inside no_grad() kept "
                       f"values in {', '.join(kept)} (use save_for_backward)")
        _check_round_trips(work, xs, run, fail)
        _check_split(work, xs, run, fail, tol)
        _check_batch_sums(work, xs, run, fail, tol)
        _check_copies(work, xs, run, fail)
    finally:
        random.set_rng_state(rng_state)


def _close(a: Any, b: Any, tol: float) -> bool:
    xp = backend.get_array_module(a, b)
    return a.shape == b.shape and bool(xp.allclose(a, b, rtol=tol, atol=tol))


def _check_accumulation(work: Layer, xs: list[Any], y: Any, run: Any, gen: Any,
                        fail: Any) -> None:
    if not work.parameters():
        return
    xp = backend.get_array_module(y)
    projection = xp.asarray(gen.standard_normal(tuple(y.shape)))
    work.zero_grad()
    run(work, xs)
    work.backward_step(projection, input_grad=True)
    once = [p.grad.copy() for p in work.parameters()]
    run(work, xs)
    work.backward_step(projection, input_grad=True)
    for (name, p), g in zip(work.named_parameters(), once):
        if not _close(p.grad, 2 * g, 1e-9):
            work.zero_grad()
            raise fail("accumulate gradients", f"a second backward without zero_grad() did "
                       f"not double {name}'s gradient: backward must add into p.grad (+=), "
                       "never assign it")
    work.zero_grad()


def _check_round_trips(work: Layer, xs: list[Any], run: Any, fail: Any) -> None:
    try:
        entry = json.loads(json.dumps(layer_config(work), default=_json_default))
        twin = layer_from_config(entry)
    except Exception as exc:
        raise fail("config round trip", f"layer_from_config(layer_config(layer)) through JSON "
                   f"raised {type(exc).__name__}: {exc}") from None
    if type(twin) is not type(work) or repr(twin) != repr(work):
        raise fail("config round trip", f"rebuilt as {twin!r}, expected {work!r}")
    for _ in range(2):                                    # move running statistics
        run(work, xs)
    work.clear_cache()
    twin.astype(backend.xp.float64)
    mine, theirs = dict(work.named_parameters()), dict(twin.named_parameters())
    state, their_state = dict(work.named_state()), dict(twin.named_state())
    if set(mine) != set(theirs) or set(state) != set(their_state):
        raise fail("checkpoint round trip", f"the rebuilt layer has parameters "
                   f"{sorted(theirs)} and state {sorted(their_state)}, the layer "
                   f"{sorted(mine)} and {sorted(state)}")
    for name, p in mine.items():
        theirs[name].data = p.data.copy()
    twin.load_named_state({k: v.copy() for k, v in state.items()})
    with modes.no_grad():
        a, b = run(work, xs, training=False), run(twin, xs, training=False)
    if not _close(a, b, 0.0):
        raise fail("checkpoint round trip", "a copy rebuilt from the config with the layer's "
                   "parameters and state computes another output: some array that defines "
                   "the layer is neither a Parameter nor declared with add_state")


def _check_split(work: Layer, xs: list[Any], run: Any, fail: Any, tol: float) -> None:
    with modes.training_mode(False):
        declared = work.per_sample
    n = xs[0].shape[0]
    if declared is not True or n < 2:
        return
    with modes.no_grad():
        whole = run(work, xs, training=False)
        halves = [run(work, [x[rows] for x in xs], training=False)
                  for rows in (slice(0, n // 2), slice(n // 2, n))]
    joined = backend.get_array_module(whole).concatenate(halves, axis=0)
    if not _close(whole, joined, tol):
        raise fail("split", "per_sample is True but the outputs of two halves of a batch "
                   "differ from the whole batch's: a layer that mixes samples sets "
                   "per_sample = False")


def _check_batch_sums(work: Layer, xs: list[Any], run: Any, fail: Any, tol: float) -> None:
    n = xs[0].shape[0]
    if not work.batch_sums or n < 2:
        return
    work.clear_cache()
    halves = [copy.deepcopy(work) for _ in range(2)]
    xp = backend.get_array_module(xs[0])
    y = run(work, xs)
    projection = xp.asarray(random.generator(7).standard_normal(tuple(y.shape)))
    work.zero_grad()
    dxs = work.backward_step(projection, input_grad=True)
    whole = [y] + list(dxs if isinstance(dxs, (list, tuple)) else [dxs])
    group = ReplicaGroup(2)
    results: list[Any] = [None, None]

    def half(rank: int, rows: slice) -> None:
        try:
            with replica_scope(group, rank), modes.training_mode(True):
                twin = halves[rank]
                twin.zero_grad()
                out = twin.forward(*[x[rows] for x in xs])
                grads = twin.backward_step(projection[rows], input_grad=True)
                results[rank] = [out] + list(grads if isinstance(grads, (list, tuple))
                                             else [grads])
        except BaseException as exc:
            group.abort()
            results[rank] = exc

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(half, rank, rows))
               for rank, rows in enumerate((slice(0, n // 2), slice(n // 2, n)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise fail("batch sums", f"forward and backward of half a batch in two threads "
                       f"raised {type(result).__name__}: {result}")
    joined = [xp.concatenate([a, b], axis=0) for a, b in zip(*results)]
    grads_differ = [name for (name, p), a, b in zip(work.named_parameters(),
                                                    halves[0].parameters(),
                                                    halves[1].parameters())
                    if not _close(p.grad, a.grad + b.grad, tol)]
    if not all(_close(a, b, tol) for a, b in zip(whole, joined)) or grads_differ:
        raise fail("batch sums", "batch_sums is True but two halves of a batch, summing with "
                   "batch_sum, give another training output or gradient than the whole batch"
                   f"{' (' + ', '.join(grads_differ) + ')' if grads_differ else ''}: every sum "
                   "over the batch must go through batch_sum")
    work.zero_grad()


def _check_copies(work: Layer, xs: list[Any], run: Any, fail: Any) -> None:
    run(work, xs)                                          # something saved: not to be copied
    try:
        copies = [("deepcopy", copy.deepcopy(work)), ("pickle", pickle.loads(pickle.dumps(work)))]
    except Exception as exc:
        raise fail("deepcopy and pickle", f"{type(exc).__name__}: {exc}") from None
    for how, twin in copies:
        held = [path or "the layer" for path, sub in twin.named_layers()
                if sub.__dict__.get("_saved") is not None]
        if held:
            raise fail("deepcopy and pickle", f"a {how} copy holds saved values in "
                       f"{', '.join(held)}")
        shared = [name for (name, p), q in zip(work.named_parameters(), twin.parameters())
                  if p.data is q.data]
        if shared:
            raise fail("deepcopy and pickle", f"a {how} copy shares {', '.join(shared)}")
        with modes.no_grad():
            if not _close(run(work, xs, training=False), run(twin, xs, training=False), 0.0):
                raise fail("deepcopy and pickle", f"a {how} copy computes another output")
    work.clear_cache()
