"""Batch normalisation (BatchNorm1D, BatchNorm2D) and the arithmetic every normalisation shares.

``normalize(x, axes, eps)`` and ``normalize_backward(...)`` compute, for the mean and biased
variance taken over ``axes`` of x (the other axes index the statistics)::

    x_hat = (x - mean) * inv_std,   inv_std = 1 / sqrt(var + eps),   y = weight * x_hat + bias
    dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)),  dx_hat = dy * weight

(the last two terms vanish when the statistics are constants, as in evaluation mode). Each layer
reshapes its input into a view where its statistics and its weight broadcast: BatchNorm views
(N, C, ...) as (N, C, S) and reduces over (0, 2); GroupNorm and LayerNorm
(``minicnn.layers.layer_norm``) reduce each sample's rows. BatchNorm and GroupNorm use
``normalize_affine``, which writes y straight from x - mean (saved for backward in place of
x_hat: one full pass fewer).

Half-precision input (float16, mixed precision) is normalised in float32 and the result cast
back, as PyTorch does: statistics, ``x_hat`` and the gradient sums are float32, and BatchNorm's
running statistics keep their own dtype (float32 in ``fit(..., precision="fp16")``, whose
working copy converts parameters only). float32 and float64 input compute in their own dtype.

BatchNorm training uses the batch's mean and (biased) variance and updates running statistics
(running = (1 - momentum) * running + momentum * batch, with the unbiased variance, as PyTorch);
evaluation uses the running statistics. In training its output for one sample depends on the
whole batch (``per_sample`` is False), but only through sums over the batch axis: every such
sum here (the statistics and the two gradient sums, wherever ``axes`` holds axis 0) is taken
with ``batch_sum``, so a model split among threads still normalises with the whole batch's
statistics (``batch_sums = True``; ``minicnn.core.batch_sum``).
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from minicnn.core import backend
from minicnn.core.batch_sum import batch_sum
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter

__all__ = ["BatchNorm1D", "BatchNorm2D", "normalize", "normalize_affine",
           "normalize_backward", "scale_shift",
           "statistics_dtype"]

Axes = tuple[int, ...]


def statistics_dtype(x: Any) -> Any:
    """The dtype normalisation computes in for the array ``x``: float32 for half precision
    (float16, bfloat16), x's own dtype otherwise."""
    if x.dtype.itemsize >= 4:
        return x.dtype
    xp = backend.get_array_module(x)
    return xp.dtype(xp.float32)


def _sum_of_products(a: Any, b: Any, axes: Axes, dtype: Any) -> Any:
    """sum(a * b) over ``axes`` (kept as size 1), without an array of the products (no axes:
    the products themselves)."""
    if not axes:
        return backend.get_array_module(a, b).multiply(a, b, dtype=dtype)
    letters = string.ascii_letters[:a.ndim]
    kept = "".join(c for i, c in enumerate(letters) if i not in axes)
    xp = backend.get_array_module(a, b)
    total = xp.einsum(f"{letters},{letters}->{kept}", a, b, dtype=dtype)
    return total.reshape([1 if i in axes else n for i, n in enumerate(a.shape)])


def _expanded(factor: Any, shape: tuple[int, ...]) -> Any:
    """``factor`` (small, broadcasting against ``shape``, e.g. (1, C, 1) for (N, C, S)) as a
    contiguous array over every axis from its first non-1 one on, (1, C, S), when that stays
    small. NumPy multiplies by a factor that repeats along the last axis (stride 0) about 1.5x
    slower than by one that only repeats along leading axes; a (C, S) operand fits in cache."""
    lead = 0
    while lead < factor.ndim and factor.shape[lead] == 1:
        lead += 1
    target = (1,) * lead + tuple(shape[lead:])
    size = 1
    for n in target:
        size *= n
    if lead == 0 or lead == factor.ndim or factor.shape[-1] != 1 or size > 1 << 20:
        return factor
    xp = backend.get_array_module(factor)
    return xp.ascontiguousarray(xp.broadcast_to(factor, target))


def _broadcast_size(*shapes: tuple[int, ...]) -> int:
    size = 1
    for n in (max(dims) for dims in zip(*shapes)):    # shapes of equal rank
        size *= n
    return size


def _sum(a: Any, axes: Axes, dtype: Any) -> Any:
    """sum over ``axes`` (kept as size 1) in ``dtype``; no axes: ``a`` itself."""
    if not axes:
        return a.astype(dtype, copy=False)
    if axes == (0,) and a.ndim == 2 and a.dtype == dtype:       # a GEMV: several times faster
        return (backend.get_array_module(a).ones(a.shape[0], dtype=dtype) @ a)[None]
    return a.sum(axis=axes, keepdims=True, dtype=dtype)


def _centred_statistics(x: Any, axes: Axes, eps: float, mean: Any = None, var: Any = None
                        ) -> tuple[Any, Any, Any, Any]:
    """(x - mean, inv_std, mean, var) in ``statistics_dtype(x)``: the batch statistics of ``x``
    over ``axes`` (kept as size 1), or the given ``mean`` and ``var`` (running statistics)."""
    xp = backend.get_array_module(x)
    dtype = statistics_dtype(x)
    if mean is None:
        count = 1
        for a in axes:
            count *= x.shape[a]
        total = _sum(x, axes, dtype)
        if 0 in axes:                       # over the batch: the whole batch's, when split
            total, count = batch_sum((total, count))
        mean = total * dtype.type(1.0 / count)
        centred = xp.subtract(x, _expanded(mean, x.shape), dtype=dtype)
        squares = _sum_of_products(centred, centred, axes, dtype)
        var = (batch_sum(squares) if 0 in axes else squares) * dtype.type(1.0 / count)
    else:
        mean, var = mean.astype(dtype, copy=False), var.astype(dtype, copy=False)
        centred = xp.subtract(x, _expanded(mean, x.shape), dtype=dtype)
    return centred, 1.0 / xp.sqrt(var + dtype.type(eps)), mean, var


def normalize(x: Any, axes: Axes, eps: float, mean: Any = None,
              var: Any = None) -> tuple[Any, Any, Any, Any]:
    """(x_hat, inv_std, mean, var) for the statistics of ``x`` over ``axes`` (kept as size 1),
    or for the given ``mean`` and ``var`` (broadcastable to that shape, e.g. running
    statistics); computed in ``statistics_dtype(x)``."""
    x_hat, inv_std, mean, var = _centred_statistics(x, axes, eps, mean, var)
    x_hat *= inv_std
    return x_hat, inv_std, mean, var


def normalize_affine(x: Any, axes: Axes, eps: float, weight: Any, bias: Any, mean: Any = None,
                     var: Any = None) -> tuple[Any, Any, Any, Any, Any]:
    """(y, centred, inv_std, mean, var): ``y = weight * x_hat + bias`` (as x's dtype; weight
    and bias may be None) for ``normalize``'s statistics, with ``centred = x - mean`` in place
    of x_hat (x_hat = centred * inv_std; ``normalize_backward(..., centred=True)`` takes it).

    Faster than ``normalize`` then ``scale_shift``: y is centred * (weight * inv_std) + bias,
    so x_hat is never written out (one full pass over the data fewer)."""
    xp = backend.get_array_module(x)
    centred, inv_std, mean, var = _centred_statistics(x, axes, eps, mean, var)
    scale = inv_std if weight is None else weight * inv_std
    y = xp.multiply(centred, _expanded(scale, x.shape))
    if bias is not None:
        y += _expanded(bias, x.shape)
    return y.astype(x.dtype, copy=False), centred, inv_std, mean, var


def scale_shift(x_hat: Any, weight: Any, bias: Any, dtype: Any) -> Any:
    """weight * x_hat + bias (either may be None), as ``dtype`` (the input's)."""
    y = x_hat if weight is None else x_hat * weight
    if bias is not None:
        y = y + bias if y is x_hat else backend.get_array_module(y).add(y, bias, out=y)
    return y.astype(dtype, copy=False)


def normalize_backward(dy: Any, x_hat: Any, inv_std: Any, axes: Axes, weight: Any = None,
                       param_axes: Sequence[int] = (), batch_statistics: bool = True,
                       input_grad: bool = True, centred: bool = False
                       ) -> tuple[Any, Any, Any]:
    """(dx, dweight, dbias) for ``y = weight * x_hat + bias`` with x_hat from ``normalize``
    (``centred=True``: ``x_hat`` is normalize_affine's x - mean, x_hat / inv_std; every use
    of it is then rescaled on the small arrays of sums and factors, not on the full array).

    ``weight`` broadcasts against x (None: no affine, dweight and dbias are None); its gradients
    are summed over ``param_axes`` (kept as size 1). ``batch_statistics``: the mean and variance
    were x's own (training), not constants. ``input_grad=False`` skips dx (None).
    """
    xp = backend.get_array_module(dy, x_hat)
    dtype = x_hat.dtype
    # Sums over the axes both reductions share, once; the rest of each sum is on small arrays.
    common = tuple(a for a in axes if a in param_axes)
    need_products = weight is not None or (input_grad and batch_statistics)
    dy_sum = _sum(dy, common, dtype)
    dy_xhat_sum = _sum_of_products(dy, x_hat, common, dtype) if need_products else None
    if centred and dy_xhat_sum is not None:
        dy_xhat_sum = dy_xhat_sum * inv_std
    dweight = dbias = None
    if weight is not None:
        rest = tuple(a for a in param_axes if a not in common)
        dbias = _sum(dy_sum, rest, dtype)
        dweight = _sum(dy_xhat_sum, rest, dtype)
    if not input_grad:
        return None, dweight, dbias
    if weight is None:
        dx = xp.multiply(dy, inv_std, dtype=dtype)
    elif _broadcast_size(weight.shape, inv_std.shape) < dy.size:     # one full pass, not two
        dx = xp.multiply(dy, _expanded(weight * inv_std, dy.shape), dtype=dtype)
    else:
        dx = xp.multiply(dy, weight, dtype=dtype)
        dx *= inv_std
    if batch_statistics:
        only = tuple(a for a in axes if a not in common)
        def summed(total: Any) -> Any:              # the sum over ``axes`` of weight * sums
            if weight is None:
                return _sum(total, only, dtype)
            if only == (1,) and total.ndim == 2 and weight.shape[0] == 1:   # rows: a GEMV
                return (total @ weight[0])[:, None]
            return _sum(weight * total, only, dtype)

        sums = summed(dy_sum), summed(dy_xhat_sum), x_hat.size // inv_std.size
        if 0 in axes:                       # over the batch: the whole batch's, when split
            sums = batch_sum(sums)
        count = dtype.type(1.0 / sums[2])
        mean_dxhat, mean_dxhat_xhat = sums[0] * count, sums[1] * count
        dx -= _expanded(mean_dxhat * inv_std, dx.shape)
        # with no shared axes the products are a full-size array of our own, free now: reuse it
        out = dy_xhat_sum if not common and dweight is not dy_xhat_sum else None
        factor = mean_dxhat_xhat * inv_std
        factor = _expanded(factor * inv_std if centred else factor, dx.shape)
        dx -= xp.multiply(x_hat, factor, dtype=dtype, out=out)
    return dx, dweight, dbias


def _channels_last(x: Any) -> bool:
    """Whether x is (N, C, H, W) with channels-last (N, H, W, C) C-contiguous memory, as
    Conv2D's output is."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous


class _BatchNorm(Layer):
    """Per-channel batch normalisation of (N, C, ...) input: the shared body of BatchNorm1D
    and BatchNorm2D, which differ only in the input ranks they accept."""

    running_mean: Any
    running_var: Any
    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or isinstance(num_features, bool) or \
                num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive int, "
                             f"got {num_features!r}")
        if not 0 <= momentum <= 1 or not eps > 0:
            raise ValueError(f"{name}: expected 0 <= momentum <= 1 and eps > 0, got "
                             f"momentum={momentum!r}, eps={eps!r}")
        self.num_features, self.momentum, self.eps = num_features, float(momentum), float(eps)
        self.weight = Parameter(initializers.ones((num_features,)), "weight")
        self.bias = Parameter(initializers.zeros((num_features,)), "bias")
        self.add_state("running_mean", initializers.zeros((num_features,)))
        self.add_state("running_var", initializers.ones((num_features,)))

    batch_sums = True                               # its statistics are batch_sum totals

    @property
    def per_sample(self) -> bool:  # type: ignore[override]  # computed: only in training
        return not self.training                    # batch statistics mix the samples

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) + 1 not in self._ranks or input_shape[0] != self.num_features:
            raise ValueError(f"{self.label()}: expected input shape {self._layout} per sample "
                             f"with C = {self.num_features}, got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: Any) -> Any:
        ndim = getattr(x, "ndim", None)
        self.check_input(x, ndim if ndim in self._ranks else self._ranks[0],
                         self._layout, channels=self.num_features)
        c = self.num_features
        rows = _channels_last(x)
        view, axes, per_channel = self._view(x, rows)
        weight = self.weight.data.reshape(per_channel)
        bias = self.bias.data.reshape(per_channel)
        if self.training:
            count = batch_sum(x.size // c)          # the whole batch's, when split
            if count < 2:
                raise ValueError(f"{self.label()}: training needs more than one value per "
                                 f"channel, got input shape {tuple(x.shape)}")
            y, centred, inv_std, mean, var = normalize_affine(view, axes, self.eps, weight, bias)
            m = self.momentum
            self._update_running(mean.reshape(c), var.reshape(c), m, count / (count - 1))
        else:
            y, centred, inv_std, _, _ = normalize_affine(
                view, axes, self.eps, weight, bias, self.running_mean.reshape(per_channel),
                self.running_var.reshape(per_channel))
        self.save_for_backward(centred, inv_std, self.training, rows)
        return self._unview(y, x.shape, rows)

    def _view(self, x: Any, rows: bool) -> tuple[Any, Axes, tuple[int, ...]]:
        """x as (N, C), (N, C, S), or with ``rows`` (channels-last (N, C, H, W) memory) as
        its (N*H*W, C) matrix, the axes its statistics are over, and the shape a per-channel
        array takes to broadcast against it. The rows view reduces over one contiguous axis
        (a matrix-vector product), measured 0.6-0.9x the time of the (N, C, S) view's strided
        sums for the zoo's shapes."""
        c = self.num_features
        if x.ndim == 2:
            return x, (0,), (1, c)
        if rows:
            return x.transpose(0, 2, 3, 1).reshape(-1, c), (0,), (1, c)
        return x.reshape(x.shape[0], c, -1), (0, 2), (1, c, 1)

    @staticmethod
    def _unview(y: Any, shape: tuple[int, ...], rows: bool) -> Any:
        """A view's result back in the input's logical shape (channels-last memory for rows)."""
        if rows:
            n, c, h, w = shape
            return y.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return y.reshape(shape)

    def _update_running(self, mean: Any, var: Any, m: float, unbias: float) -> None:
        """running = (1 - m) * running + m * batch, in the running statistics' own dtype."""
        for name, batch in (("running_mean", mean), ("running_var", var * unbias)):
            running = getattr(self, name)
            kind = running.dtype.type
            setattr(self, name, kind(1 - m) * running + kind(m) * batch.astype(running.dtype))

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        centred, inv_std, training, rows = self.pop_saved()
        c = self.num_features
        dy, axes, per_channel = self._view(grad_out, rows)       # the forward's view
        dx, dweight, dbias = normalize_backward(
            dy, centred, inv_std, axes, self.weight.data.reshape(per_channel), axes, training,
            input_grad, centred=True)
        self.weight.grad += dweight.reshape(c).astype(self.weight.grad.dtype, copy=False)
        self.bias.grad += dbias.reshape(c).astype(self.bias.grad.dtype, copy=False)
        return None if dx is None else self._unview(
            dx.astype(grad_out.dtype, copy=False), grad_out.shape, rows)

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """BatchNormalization in inference form (the running statistics); ONNX takes (N, C)
        and (N, C, D1, ...) input alike."""
        args = [inputs[0]] + [ctx.add_initializer(f"{ctx.name}.{key}", value) for key, value in (
            ("weight", self.weight.data), ("bias", self.bias.data),
            ("running_mean", self.running_mean), ("running_var", self.running_var))]
        return ctx.add_node("BatchNormalization", args, [ctx.name], epsilon=self.eps)[0]


class BatchNorm2D(_BatchNorm):
    """y = weight * (x - mean) / sqrt(var + eps) + bias per channel of (N, C, H, W) input,
    statistics over (N, H, W); weight, bias, running_mean, running_var: (C,)."""

    _ranks = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm1D(_BatchNorm):
    """BatchNorm2D's normalisation for (N, C) or (N, C, L) input (PyTorch's BatchNorm1d),
    statistics over N (and L) per channel; weight, bias, running statistics: (C,)."""

    _ranks = (2, 3)
    _layout = "(N, C) or (N, C, L)"
