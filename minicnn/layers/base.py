"""The Layer protocol and the Parameter that holds a trainable array and its gradient.

A layer computes ``forward(x) -> y`` and, given dLoss/dy, ``backward(grad_out) -> dLoss/dx``.
Backward also *adds* dLoss/dparam into each ``Parameter.grad`` (gradients accumulate, as in
PyTorch, until ``zero_grad()``). Shapes handed to ``output_shape`` exclude the batch axis.

A new layer is one short class: see ``examples/custom_layer.py``.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

from minicnn import backend

LAYER_REGISTRY: dict[str, type] = {}
"""Every Layer subclass by class name, so a checkpoint can rebuild a model from its JSON."""


_grad_enabled = True


@contextmanager
def no_grad() -> Iterator[None]:
    """Inside this block layers keep nothing for backward: inference with less memory and
    time (Conv2D then also works through the batch in slices, bounding its im2col buffer)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def grad_enabled() -> bool:
    """False inside ``no_grad()``."""
    return _grad_enabled


def column_sums(a: Any) -> Any:
    """Sum of a 2-D array's rows, (M, K) -> (K,), as a matrix-vector product: on NumPy that is
    several times faster than ``a.sum(axis=0)`` for tall arrays (bias gradients)."""
    return backend.xp.ones(a.shape[0], dtype=a.dtype) @ a


class Parameter:
    """A trainable array ``data`` and the gradient ``grad`` accumulated into it (same shape)."""

    def __init__(self, data: Any, name: str = ""):
        self.data = data
        self.grad = backend.module_of(data).zeros_like(data)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def __repr__(self) -> str:
        return f"Parameter({self.name or '?'}, shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: parameter bookkeeping, train/eval mode, devices, repr and graph building.

    Subclasses implement ``forward``, ``backward`` and, when the shape changes,
    ``output_shape``. Constructor arguments are recorded automatically (for checkpoints and
    ``repr``), so keep them JSON-friendly: ints, floats, strings, tuples.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "Layer":
        self = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # self
        self._init_args = arguments
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LAYER_REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        self.training = True
        self.name = ""
        # Layers inside a model skip the NaN/inf scan of their input: the model checks its own
        # input once, and every later activation comes from a layer, not from the user.
        self.check_finite = True

    # --- the protocol -------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (batch axis excluded)."""
        return tuple(input_shape)

    # --- parameters and modes -----------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) pairs of this layer and of any layers it holds as attributes."""
        for attr, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + attr, value
            elif isinstance(value, Layer):
                yield from value.named_parameters(prefix + attr + ".")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> "Layer":
        self.training = mode
        for value in vars(self).values():
            if isinstance(value, Layer):
                value.train(mode)
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    def state_arrays(self) -> dict[str, Any]:
        """Arrays that define the layer but are not trained (e.g. BatchNorm running stats)."""
        return {}

    def load_state_arrays(self, arrays: dict[str, Any]) -> None:
        for key, value in arrays.items():
            setattr(self, key, value)

    def to(self, backend_name: str) -> "Layer":
        """Move parameters and state to 'numpy' or 'cupy'; drops cached activations."""
        for p in self.parameters():
            p.data = backend.to_backend(p.data, backend_name)
            p.grad = backend.to_backend(p.grad, backend_name)
        self.load_state_arrays({k: backend.to_backend(v, backend_name)
                                for k, v in self.state_arrays().items()})
        self.clear_cache()
        return self

    def astype(self, dtype: Any) -> "Layer":
        """Convert parameters and state to ``dtype`` (float64 for gradient checks)."""
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        self.load_state_arrays({k: v.astype(dtype) for k, v in self.state_arrays().items()})
        self.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Forget activations saved for backward and reusable buffers."""
        for attr in [a for a in vars(self) if a.startswith("_cache") or a.startswith("_buf")]:
            setattr(self, attr, None)

    @property
    def dtype(self) -> Any:
        params = self.parameters()
        return params[0].data.dtype if params else None

    # --- input checks shared by the built-in layers -------------------------------------
    def label(self) -> str:
        return f"{self.name} ({self!r})" if self.name else repr(self)

    def check_input(self, x: Any, ndim: int | None = None, layout: str = "",
                    channels: int | None = None, features: int | None = None) -> None:
        """Raise TypeError/ValueError naming this layer when ``x`` is not what it expects."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{self.label()}: expected an array, got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"{self.label()}: expected a floating-point array "
                            f"({backend.default_dtype.__name__}), got dtype {x.dtype}")
        own = self.dtype
        if own is not None and x.dtype != own:
            raise TypeError(f"{self.label()}: expected {own} input to match its parameters, "
                            f"got {x.dtype} (convert the input or call .astype on the model)")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{self.label()}: expected a {ndim}-D input {layout}, "
                             f"got shape {tuple(x.shape)}")
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f"{self.label()}: expected {channels} input channels {layout}, "
                             f"got shape {tuple(x.shape)}")
        if features is not None and x.shape[-1] != features:
            raise ValueError(f"{self.label()}: expected {features} input features {layout}, "
                             f"got shape {tuple(x.shape)}")
        if self.check_finite and x.size and not bool(backend.xp.isfinite(x).all()):
            raise ValueError(f"{self.label()}: input contains NaN or inf")

    def check_backward(self, cache: Any) -> None:
        if cache is None:
            raise ValueError(f"{self.label()}: backward called before forward (or after a "
                             "forward inside minicnn.no_grad(), or after the cache was cleared)")

    # --- graph building and printing ----------------------------------------------------
    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        from minicnn.models import SymbolicTensor
        if len(inputs) == 1 and isinstance(inputs[0], list | tuple):
            inputs = tuple(inputs[0])          # Add()([a, b]) as in Keras
        if inputs and all(isinstance(t, SymbolicTensor) for t in inputs):
            return SymbolicTensor.from_layer(self, inputs)
        return self.forward(*inputs, **kwargs)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, for rebuilding the layer (see ``LAYER_REGISTRY``)."""
        return dict(self._init_args)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._init_args.items())
        return f"{type(self).__name__}({args})"
