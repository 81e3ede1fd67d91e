"""The Layer protocol and the Parameter that holds a trainable array and its gradient.

A new layer is one class; this is everything the base class needs from it::

    class Scale(Layer):
        def __init__(self, channels: int):
            super().__init__()                       # constructor arguments are recorded
            self.s = Parameter(initializers.ones((1, channels, 1, 1)), "s")   # found wherever held
        def forward(self, x):
            self.save_for_backward(x)                # kept only when gradients are recorded
            return x * self.s.data
        def backward(self, grad_out):
            (x,) = self.pop_saved()                  # one clear error if forward did not save
            self.s.grad += (grad_out * x).sum(axis=(0, 2, 3), keepdims=True)   # add, never =
            return grad_out * self.s.data

* ``forward(x) -> y`` and ``backward(grad_out) -> dL/dx``; backward *adds* dL/dparam into each
  ``Parameter.grad`` (gradients accumulate until ``zero_grad()``). A layer with several inputs
  returns a tuple of input gradients.
* ``backward`` may take a keyword ``input_grad: bool = True``; a model passes False to its first
  layers when nobody needs dL/dx, and the layer may then skip computing it and return None.
* ``Parameter`` s and sub-layers are found in attributes, lists, tuples and dicts, by one walk
  (``named_layers``, ``named_parameters``, ``named_state``) that checkpoints, ``to()``,
  replicas, distributed broadcasts, visualize and ONNX export all use.
* Arrays that define the layer but are not trained (running statistics) are declared once
  with ``self.add_state(name, array)``; they are saved, loaded, moved and shared like weights.
* ``output_shape(input_shape)`` (per-sample shapes) if the layer changes the shape; a layer
  without one that changes the shape is named when a model is built (a probe forward).
* Constructor arguments are recorded for ``config()`` (checkpoints, ``repr``) and must be
  JSON-friendly (numbers, strings, None, lists, tuples, dicts): anything else is refused when
  the layer is made. The class name is the checkpoint's key: one already taken by another
  module's layer is refused when the class is defined.
* Compute with the array module of the inputs (``xp = backend.get_array_module(x)``).
* ``per_sample = True`` says each sample's output depends on that sample alone, so a model may
  split a batch among threads; undeclared (None), a layer is not split. A layer whose samples
  meet only through sums over the batch takes them with ``core.batch_sum.batch_sum`` and
  declares ``batch_sums = True`` (BatchNorm in training): it is split too.
* A layer object appears once in a model; ``minicnn.testing.check_layer`` checks the rest.
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from minicnn.core import backend, modes
from minicnn.core.modes import grad_enabled, no_grad
from minicnn.core.symbolic import SymbolicTensor
from minicnn.layers.parameter import Parameter, column_sums
from minicnn.layers.registry import LAYER_REGISTRY, check_json_arguments, register
from minicnn.layers.shapes import checked_output_shape

__all__ = ["Layer", "Parameter", "LAYER_REGISTRY", "no_grad", "grad_enabled", "column_sums",
           "layer_config", "layer_from_config"]

def _record_init_arguments(cls: type[Layer]) -> None:
    """Wrap ``cls.__init__`` so the outermost call records its bound arguments (for config)."""
    original = cls.__dict__["__init__"]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Layer, *args: Any, **kwargs: Any) -> None:
        if "_init_args" not in self.__dict__:      # the most derived __init__ runs first
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(arguments)))   # self
            if type(self).config is Layer.config:  # stored as they are: JSON-friendly only
                check_json_arguments(type(self), arguments)
            self.__dict__["_init_args"] = arguments
        original(self, *args, **kwargs)

    # Replacing __init__ on the class is the point here (mypy forbids assigning to methods).
    cls.__init__ = __init__  # type: ignore[method-assign]


def _takes_input_grad(cls: type[Layer]) -> bool:
    try:
        return "input_grad" in inspect.signature(cls.backward).parameters
    except (TypeError, ValueError):
        return False


_TRANSIENT = ("_saved", "_workspace", "_replicas")
"""Attributes that hold activations, scratch buffers or threads: never copied or pickled."""
_BASE_OWNED = _TRANSIENT + ("_init_args", "_training", "_state_names")
"""Attributes the base class keeps for itself: never searched for parameters or layers."""


class Layer:
    """Base class: parameter discovery, saved values, train/eval mode, devices, graph building.

    See the module docstring for the whole protocol, in one example.
    """

    per_sample: bool | None = None
    """Whether each sample's output depends on that sample alone, so a model may split a batch
    among threads. None (undeclared) counts as False: a layer is split only when it declares
    ``per_sample = True`` (every built-in does; BatchNorm2D only in eval mode, Softmax by its
    axis). Set it in the class body or ``__init__``, or compute it with a property;
    ``minicnn.testing.check_layer`` checks a True claim."""

    batch_sums: bool = False
    """Whether the layer's samples meet only through sums over the batch taken with
    ``minicnn.core.batch_sum.batch_sum``, which add over every slice when a model splits a
    batch among threads: such a layer is split even where ``per_sample`` is False, and
    computes the whole batch's result (``check_layer`` checks a True claim)."""

    _backward_takes_input_grad: ClassVar[bool] = False
    """Whether this class's ``backward`` takes ``input_grad`` (set for each subclass)."""
    _saved: tuple[Any, ...] | None

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            _record_init_arguments(cls)
        cls._backward_takes_input_grad = _takes_input_grad(cls)
        if not abstract and not cls.__name__.startswith("_"):   # bases, helpers: not loadable
            register(cls)

    def __init__(self) -> None:
        self.__dict__.setdefault("_init_args", {})
        self._training = True
        self.name = ""

    # --- the protocol -------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad_out: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (batch axis excluded)."""
        return tuple(input_shape)

    def infer_output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        """``output_shape``, checked by a probe forward when the class does not define it
        (``minicnn.layers.shapes``); what models call while they are built."""
        return checked_output_shape(self, *input_shapes)

    def backward_step(self, grad_out: Any, input_grad: bool = True) -> Any:
        """Call ``backward``, passing ``input_grad`` when the layer's backward takes it (models
        call this; a layer's own code never needs to)."""
        if self._backward_takes_input_grad:
            backward: Callable[..., Any] = self.backward    # this subclass's takes input_grad
            return backward(grad_out, input_grad=input_grad)
        grad = self.backward(grad_out)
        return grad if input_grad else None

    # --- what forward keeps for backward ------------------------------------------------
    def save_for_backward(self, *values: Any) -> None:
        """Keep ``values`` for ``backward``, only while gradients are recorded in this thread
        (inside ``no_grad()`` nothing is kept, and what an earlier forward kept is left alone)."""
        if grad_enabled():
            self._saved = values

    def pop_saved(self) -> tuple[Any, ...]:
        """What forward saved, forgotten here (so the memory can go); one clear error if
        nothing was saved."""
        saved = self.__dict__.get("_saved")
        if saved is None:
            raise ValueError(f"{self.label()}: backward called before forward (or after a "
                             "forward inside minicnn.no_grad(), or after clear_cache())")
        self._saved = None
        return saved

    def workspace(self, key: str, shape: tuple[int, ...], dtype: Any, xp: Any,
                  init: Callable[[Any], None] | None = None) -> Any:
        """A scratch array kept between calls (reallocated when shape, dtype or module change;
        ``init(array)`` runs on each new one); dropped by ``clear_cache`` and copies."""
        spaces = self.__dict__.setdefault("_workspace", {})
        array = spaces.get(key)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype or \
                backend.get_array_module(array) is not xp:
            array = spaces[key] = xp.empty(shape, dtype=dtype)
            if init is not None:
                init(array)
        return array

    def clear_cache(self) -> None:
        """Forget saved values and scratch buffers, in this layer and every sub-layer."""
        for _, layer in self.named_layers():
            for attr in _TRANSIENT:
                layer.__dict__.pop(attr, None)

    # --- sub-layers and parameters ------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Layer]]:
        """(name, layer) for every layer held in an attribute, or in a list, tuple or dict."""
        for attr, value in vars(self).items():
            if attr not in _BASE_OWNED:
                yield from _held(attr, value, Layer)

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """(path, layer) for this layer (path ``prefix``, "" at the top) and every layer below
        it, depth first in ``named_children`` order, each layer once: the one walk of the layer
        tree that parameters, state, checkpoints, devices, replicas and broadcasts all use."""
        seen: set[int] = set()
        stack: list[tuple[str, Layer]] = [(prefix, self)]
        while stack:
            path, layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield path, layer
            children = [(_join(path, name), child) for name, child in layer.named_children()]
            stack.extend(reversed(children))

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) pairs of this layer and its sub-layers, each Parameter once."""
        seen: set[int] = set()
        for path, layer in self.named_layers():
            for attr, value in vars(layer).items():
                if attr in _BASE_OWNED:
                    continue
                for name, p in _held(attr, value, Parameter):
                    if id(p) not in seen:
                        seen.add(id(p))
                        yield prefix + _join(path, name), p

    def named_state(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """(name, array) for every non-trained array (``add_state``) of this layer and its
        sub-layers, named like parameters (``batchnorm2d_1.running_mean``)."""
        for name, _, _, value in self._state_entries(prefix):
            yield name, value

    def load_named_state(self, arrays: dict[str, Any]) -> None:
        """Set the state arrays named in ``arrays`` (names as ``named_state`` gives them)."""
        for name, layer, key, _ in list(self._state_entries()):
            if name in arrays:
                layer.load_state_arrays({key: arrays[name]})

    def _state_entries(self, prefix: str = "") -> Iterator[tuple[str, Layer, str, Any]]:
        for path, layer in self.named_layers():
            for key, value in layer.state_arrays().items():
                yield prefix + _join(path, key), layer, key, value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # --- modes ----------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        """Training mode: ``forward(x, training=...)``'s value during that call (in its
        thread), otherwise what ``train()`` / ``eval()`` set."""
        override = modes.training_override()
        return self.__dict__.get("_training", True) if override is None else override

    @training.setter
    def training(self, mode: bool) -> None:
        self._training = bool(mode)

    def train(self, mode: bool = True) -> Layer:
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def eval(self) -> Layer:
        return self.train(False)

    # --- state, devices, dtypes, copies -------------------------------------------------
    def add_state(self, name: str, value: Any) -> None:
        """Declare the attribute ``name`` (set to ``value``) an array that defines the layer
        but is not trained, e.g. BatchNorm's running statistics: checkpoints save and load it,
        ``to()`` and ``astype()`` convert it, replicas and distributed ranks share rank 0's.
        Assign the attribute as usual afterwards (``self.name = new_array``)."""
        names = self.__dict__.setdefault("_state_names", [])
        if name not in names:
            names.append(name)
        setattr(self, name, value)

    def state_arrays(self) -> dict[str, Any]:
        """This layer's own state arrays (declared with ``add_state``), by attribute name;
        ``named_state`` walks the whole tree."""
        return {k: getattr(self, k) for k in self.__dict__.get("_state_names", ())}

    def load_state_arrays(self, arrays: dict[str, Any]) -> None:
        for key, value in arrays.items():
            setattr(self, key, value)

    def _convert(self, fn: Callable[[Any], Any]) -> Layer:
        for p in self.parameters():
            p.data, p.grad = fn(p.data), fn(p.grad)
        for _, layer in self.named_layers():
            state = layer.state_arrays()
            if state:
                layer.load_state_arrays({k: fn(v) for k, v in state.items()})
        self.clear_cache()
        return self

    def to(self, backend_name: str) -> Layer:
        """Move parameters and state to 'numpy' or 'cupy' (the layer then computes there,
        whatever the global backend); drops saved values and buffers."""
        return self._convert(lambda a: backend.to_backend(a, backend_name))

    def astype(self, dtype: Any) -> Layer:
        """Convert parameters and state to ``dtype`` (float64 for gradient checks)."""
        return self._convert(lambda a: a.astype(dtype))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def replica(self) -> Layer:
        """A copy that shares this layer's parameter arrays (``p.data``) but has its own
        gradients, saved values and buffers: what a thread needs to run a slice of a batch."""
        memo: dict[int, Any] = {id(p.data): p.data for p in self.parameters()}
        twin = copy.deepcopy(self, memo)
        for p in twin.parameters():
            p.grad = backend.module_of(p.data).zeros_like(p.data)
        return twin

    @property
    def dtype(self) -> Any:
        params = self.parameters()
        return params[0].data.dtype if params else None

    # --- input checks shared by the built-in layers -------------------------------------
    def label(self) -> str:
        return f"{self.name} ({self!r})" if self.name else repr(self)

    def check_input(self, x: Any, ndim: int | None = None, layout: str = "",
                    channels: int | None = None, features: int | None = None) -> None:
        """Raise TypeError/ValueError naming this layer when ``x`` is not what it expects
        (NaN/inf are scanned for only when the layer is called alone, not inside a model)."""
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
        if not modes.is_inside_model() and x.size and \
                not bool(backend.get_array_module(x).isfinite(x).all()):
            raise ValueError(f"{self.label()}: input contains NaN or inf")

    # --- graph building and printing ----------------------------------------------------
    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        if len(inputs) == 1 and isinstance(inputs[0], list | tuple) and inputs[0] and \
                all(isinstance(t, SymbolicTensor) for t in inputs[0]):
            inputs = tuple(inputs[0])          # Add()([a, b]) as in Keras
        if inputs and all(isinstance(t, SymbolicTensor) for t in inputs):
            return SymbolicTensor.from_layer(self, inputs)
        return self.forward(*inputs, **kwargs)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, for rebuilding the layer (see ``LAYER_REGISTRY``)."""
        return dict(self.__dict__.get("_init_args", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _held(name: str, value: Any, kind: type) -> Iterator[tuple[str, Any]]:
    """(name, item) for ``value`` if it is a ``kind``, or for the ``kind`` s inside a list,
    tuple or dict (named ``name.index`` / ``name.key``)."""
    if isinstance(value, kind):
        yield name, value
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _held(f"{name}.{i}", item, kind)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _held(f"{name}.{key}", item, kind)


def layer_config(layer: Layer) -> dict[str, Any]:
    """``{"class": ..., "name": ..., "config": {...}}``: what ``layer_from_config`` rebuilds."""
    return {"class": type(layer).__name__, "name": layer.name, "config": layer.config()}


def layer_from_config(entry: dict[str, Any]) -> Layer:
    """Rebuild a layer (or a model) from ``{"class": name, "config": {...}, "name": ...}``;
    the class must be in ``LAYER_REGISTRY`` (defining a Layer subclass registers it)."""
    name = entry.get("class")
    cls = LAYER_REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}: import the module that defines it "
                         "before loading (on the command line: --import MODULE)")
    config = {k: layer_from_config(v) if isinstance(v, dict) and "class" in v else v
              for k, v in entry["config"].items()}
    config = {k: tuple(v) if isinstance(v, list) and k != "layers" and k != "nodes" else v
              for k, v in config.items()}
    layer = cls.from_config(config) if hasattr(cls, "from_config") else cls(**config)
    layer.name = entry.get("name", "")
    return layer
