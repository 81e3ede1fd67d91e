"""PyTorch as an oracle for one layer: forward and every gradient, in float32 and float64.

    worst = torch_parity(layer, lambda x, p: F.conv2d(x, p["weight"], p["bias"], groups=2),
                         x, dtype=np.float64)

``torch_fn(x, params)`` computes PyTorch's output from the input tensor(s) and a dict of the
layer's parameters by minicnn name (``named_parameters``), each a leaf tensor holding minicnn's
values (transpose there if PyTorch's layout differs). Both sides get the same input and the same
output gradient; the layer's output, input gradient(s) and parameter gradients are compared with
``assert_allclose``. Returns the worst relative error seen (for the closing notes' tables).
Callers skip with ``pytest.importorskip("torch")`` first: torch is never a dependency.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import minicnn

TOLERANCES = {np.float64: (1e-10, 1e-12), np.float32: (2e-5, 2e-6)}
"""(rtol, atol as a fraction of the reference's largest magnitude) per dtype."""


def _worst(got: np.ndarray, want: np.ndarray, what: str, rtol: float, atol: float) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, PyTorch {want.shape}"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(scale, 1e-30),
                               err_msg=what)
    big = np.abs(want) >= 1e-3 * scale
    if not big.any():
        return 0.0
    return float((np.abs(got - want)[big] / np.abs(want[big])).max())


def torch_parity(layer: Any, torch_fn: Callable[[Any, dict[str, Any]], Any],
                 inputs: np.ndarray | Sequence[np.ndarray], dtype: Any = np.float64,
                 training: bool = True, seed: int = 0, rtol: float | None = None,
                 atol: float | None = None) -> float:
    """Compare ``layer`` with ``torch_fn`` on ``inputs`` in ``dtype``; worst relative error."""
    import torch

    default_rtol, default_atol = TOLERANCES[np.dtype(dtype).type]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    xs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    xs = [np.ascontiguousarray(x, dtype=dtype) for x in xs]
    layer.astype(dtype)
    layer.zero_grad()
    named = dict(layer.named_parameters())
    params = {name: torch.tensor(np.array(p.data), requires_grad=True)
              for name, p in named.items()}
    xts = [torch.tensor(x, requires_grad=True) for x in xs]

    layer.train(training)
    y = layer.forward(*xs)
    yt = torch_fn(xts[0] if len(xts) == 1 else xts, params)
    worst = _worst(y, yt.detach().numpy(), f"{layer!r} forward", rtol, atol)
    # a stream of its own: an output gradient equal to the input would hide BatchNorm's dx
    dy = np.random.default_rng([seed, 7919]).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dxs = layer.backward(dy)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    for i, (dx, xt) in enumerate(zip(dxs, xts)):
        assert xt.grad is not None, f"{layer!r}: PyTorch's output does not depend on input {i}"
        worst = max(worst, _worst(minicnn.backend.to_numpy(dx), xt.grad.numpy(),
                                  f"{layer!r} input gradient {i}", rtol, atol))
    for name, p in named.items():
        grad = params[name].grad
        want = np.zeros(p.shape) if grad is None else grad.numpy()
        worst = max(worst, _worst(minicnn.backend.to_numpy(p.grad), want,
                                  f"{layer!r} gradient of {name}", rtol, atol))
    return worst
