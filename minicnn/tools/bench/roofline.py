"""How far a training step is from the machine's limit: the step's floating-point operations
(``step_flops``), against the matrix-multiply rate measured on this machine (``matmul_peak``).

Only the matrix-product work is counted, 2 FLOPs per multiply-add, as rooflines do: a
convolution's forward does N * H_out * W_out * C_out * (C_in / groups) * kh * kw multiply-adds
(each output is one window's dot product with one filter); its backward does as many again
for the weight gradient and as many for the input gradient (skipped by a layer reading only
the model's input, which needs none); a transposed convolution the same counted per input
pixel; Dense N * in * out per pass. Element-wise layers (activations, BatchNorm, pooling) are
not counted: they are bound by memory, not by multiplies.
"""
from __future__ import annotations

import math
import time
from typing import Any

from minicnn.layers import Conv2D, Dense, Layer
from minicnn.layers.conv_transpose import ConvTranspose2D
from minicnn.models import Network
from minicnn.tools.bench.timing import graph_nodes


def _multiply_adds(layer: Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass through ``layer``."""
    if isinstance(layer, Conv2D):
        kh, kw = layer.kernel_size
        return math.prod(out_shape) * (in_shape[0] // layer.groups) * kh * kw
    if isinstance(layer, ConvTranspose2D):
        kh, kw = layer.kernel_size
        return math.prod(in_shape) * (out_shape[0] // layer.groups) * kh * kw
    if isinstance(layer, Dense):
        return in_shape[-1] * out_shape[-1]
    return 0


def step_flops(model: Network, input_shape: tuple[int, ...], batch_size: int
               ) -> dict[str, int]:
    """``{"forward": F, "step": S}``: FLOPs of the forward pass and of a whole training step
    (forward + backward) on a batch of ``batch_size`` inputs of per-sample ``input_shape``."""
    layers, reads = graph_nodes(model)
    shapes: list[tuple[int, ...]] = []
    forward = step = 0
    for layer, parents in zip(layers, reads):
        ins = [tuple(input_shape) if j < 0 else shapes[j] for j in parents]
        shapes.append(tuple(layer.output_shape(*ins)))
        f = 2 * batch_size * _multiply_adds(layer, ins[0], shapes[-1])
        needs_input_grad = any(j >= 0 for j in parents)
        forward += f
        step += f * (2 + needs_input_grad)     # forward, weight gradient, input gradient
    return {"forward": forward, "step": step}


def matmul_peak(xp: Any, n: int = 1024, reps: int = 10, dtype: str = "float32",
                sync: Any = None) -> float:
    """FLOP/s of ``xp``'s (n, n) @ (n, n) matrix multiply in ``dtype``: 2 n^3 over the fastest
    of ``reps`` timed products after one warm-up (``sync()`` before each clock read on a GPU).
    The fastest, not the median: a peak is what the machine can do, and on a shared machine
    the slower products measure the neighbours (measured here: medians of 5 ranged 104-198
    GFLOP/s between runs of one afternoon)."""
    a = xp.ones((n, n), dtype=dtype)
    b = xp.ones((n, n), dtype=dtype)
    out = xp.empty((n, n), dtype=dtype)
    sync = sync or (lambda: None)
    seconds = []
    for i in range(reps + 1):
        sync()
        start = time.perf_counter()
        xp.matmul(a, b, out=out)
        sync()
        if i:
            seconds.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(seconds)


def roofline_line(flops: dict[str, int], step_s: float, peak: float) -> str:
    """One line: the step's GFLOP, the achieved GFLOP/s and the share of the measured peak."""
    achieved = flops["step"] / step_s
    return (f"roofline: {flops['step'] / 1e9:.3g} GFLOP per training step (conv and dense "
            f"multiply-adds x2), {achieved / 1e9:.1f} GFLOP/s achieved at the median step; "
            f"float32 matmul peak measured here {peak / 1e9:.1f} GFLOP/s (1024x1024, best of "
            f"10): {100 * achieved / peak:.0f}% of it")
