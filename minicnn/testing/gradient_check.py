"""Gradient checking: compare a layer's backward with central differences, in float64.

For a layer f, a random input x and a fixed random projection r, the scalar
L = sum(f(x) * r) has dL/dy = r, so ``backward(r)`` must return dL/dx and add dL/dparam into the
parameter gradients. Each is compared with (L(t + eps) - L(t - eps)) / (2 eps) per element t.
Before that backward every parameter gradient is filled with random numbers, and what backward
added is what is checked: a backward that overwrites a gradient (``grad =``) instead of adding
to it (``grad +=``) fails.

The relative error of an element is |analytic - numeric| / max(|analytic|, |numeric|, floor)
with floor = 1e-3 times the tensor's largest numeric gradient, so elements whose true gradient
is (nearly) zero do not divide by zero.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from minicnn.core import backend, random
from minicnn.layers.base import Layer


class GradientCheckError(AssertionError):
    """Raised by ``gradcheck`` when a gradient's relative error exceeds the tolerance."""


def numeric_gradient(f: Callable[[], float], array: Any, indices: Sequence[int],
                     eps: float) -> Any:
    """Central differences of the scalar f() with respect to ``array.flat[i]`` for i in indices."""
    flat = array.reshape(-1)           # a view: the arrays checked here are contiguous
    xp = backend.get_array_module(array)
    out = xp.zeros(len(indices), dtype=xp.float64)
    for n, i in enumerate(indices):
        old = float(flat[i])
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        out[n] = (plus - minus) / (2 * eps)
    return out


def relative_error(analytic: Any, numeric: Any) -> float:
    """Worst element-wise relative error (see the module docstring for the floor)."""
    xp = backend.get_array_module(analytic, numeric)
    if analytic.size == 0:
        return 0.0
    floor = max(1e-3 * float(xp.abs(numeric).max()), 1e-12)
    denom = xp.maximum(xp.maximum(xp.abs(analytic), xp.abs(numeric)), floor)
    return float((xp.abs(analytic - numeric) / denom).max())


def gradcheck(layer: Layer, input_shape: Sequence[int] | Sequence[Sequence[int]],
              eps: float = 1e-5, tol: float = 1e-6, seed: int = 0,
              max_elements: int | None = 400, inputs: Sequence[Any] | None = None,
              verbose: bool = False) -> dict[str, float]:
    """Check a layer's (or model's) gradients on inputs and every parameter, in float64.

    input_shape: the full input shape including the batch axis, e.g. (2, 3, 8, 8); a list of
    shapes for a layer with several inputs (Add, Concatenate). ``inputs`` may give the arrays
    instead. At most ``max_elements`` randomly chosen elements of each tensor are checked.
    Returns {tensor name: worst relative error}; raises GradientCheckError when one exceeds
    ``tol``. The layer's parameters are converted to float64 for the check and back after.
    """
    params = layer.parameters()
    xp = backend.get_array_module(params[0].data) if params else \
        backend.get_array_module(*(inputs or ())) if inputs else backend.xp
    saved_state = random.get_rng_state()
    gen = random.generator(seed)

    def draw(shape: tuple[int, ...]) -> Any:
        return xp.asarray(gen.standard_normal(shape))

    if inputs is None:
        # one shape, or one per input (mypy cannot narrow the union from its first item)
        shapes = [cast("Sequence[int]", input_shape)] if isinstance(input_shape[0], int) \
            else list(cast("Sequence[Sequence[int]]", input_shape))
        inputs = [draw(tuple(s)) for s in shapes]
    xs = [xp.asarray(x, dtype=xp.float64).copy() for x in inputs]
    original_dtype = layer.dtype
    layer.astype(xp.float64)
    try:
        def run() -> Any:
            random.set_rng_state(saved_state)          # identical dropout masks every run
            out = layer.forward(*xs)
            return out

        y = run()
        projection = draw(tuple(y.shape))

        def loss() -> float:
            return float((run() * projection).sum())

        named = list(layer.named_parameters())
        before = []
        for _, p in named:                           # backward must add to what is there
            p.grad[...] = draw(p.grad.shape)
            before.append(p.grad.copy())
        run()
        grads = layer.backward_step(projection, input_grad=True)
        grads = grads if isinstance(grads, tuple) else (grads,)
        tensors = [(f"input{i}" if len(xs) > 1 else "input", x, g) for i, (x, g) in
                   enumerate(zip(xs, grads))]
        tensors += [(name, p.data, p.grad - start) for (name, p), start in zip(named, before)]
        errors = {}
        for name, data, grad in tensors:
            if grad is None:
                raise GradientCheckError(f"gradcheck: {layer!r} returned no gradient for {name}")
            count = data.size if max_elements is None else min(data.size, max_elements)
            idx = [int(i) for i in gen.choice(data.size, size=count, replace=False)]
            numeric = numeric_gradient(loss, data, idx, eps)
            analytic = grad.reshape(-1)[xp.asarray(idx)] if idx else grad.reshape(-1)[:0]
            errors[name] = relative_error(analytic.astype(xp.float64), numeric)
    finally:
        random.set_rng_state(saved_state)
        layer.zero_grad()
        if original_dtype is not None:
            layer.astype(original_dtype)
        layer.clear_cache()
    if verbose:
        for name, err in errors.items():
            print(f"  {name:<24} max relative error {err:.2e}")
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = ", ".join(f"{k}: {v:.2e}" for k, v in bad.items())
        raise GradientCheckError(f"gradcheck failed for {layer!r}: relative error above "
                                 f"{tol:g} in {worst}")
    return errors
