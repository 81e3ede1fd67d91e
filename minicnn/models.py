"""Models: ``Sequential`` (a list of layers) and ``Model`` (a graph built Keras-style).

Graph API::

    x = Input((1, 28, 28))
    h = Conv2D(1, 8, 3, padding=1)(x)
    y = Add()([h, ReLU()(h)])          # or Add()(h, ReLU()(h))
    model = Model(x, y)

Calling a layer on symbolic tensors records an edge and infers the output shape at once, so a
graph whose shapes do not fit fails while it is being built. ``Model`` runs the layers in
topological order; in backward, gradients of a tensor used by several layers are summed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from minicnn.core import backend, modes
from minicnn.core.symbolic import Input, SymbolicTensor
from minicnn.layers.base import Layer, layer_config, layer_from_config
from minicnn.training import evaluation, parallel
from minicnn.training import loop as train

_Method = TypeVar("_Method", bound=Callable[..., Any])

__all__ = ["Network", "Sequential", "Model", "Input", "SymbolicTensor", "layer_from_config"]


def _documented_as(function: Callable[..., Any]) -> Callable[[_Method], _Method]:
    """Give a model method the docstring of the loop function it calls (model first)."""
    def document(method: _Method) -> _Method:
        method.__doc__ = function.__doc__
        return method
    return document


class Network(Layer, abstract=True):
    """What Sequential and Model share: naming, input checks, splitting a batch, summary.

    Subclasses implement ``forward_layers(x)`` and ``backward_layers(grad, input_grad)``, which
    run the layers on one (slice of a) batch. ``forward`` checks the input, moves it to the
    parameters' array module, and on the NumPy backend splits a batch among replicas of the
    model in threads when that is faster and exact (``minicnn.training.parallel``);
    ``backward`` follows the same split. ``workers`` caps the replicas (None: one per core;
    1: never split).
    """

    workers: int | None = None
    seen_input_shape: tuple[int, ...] | None = None
    """The per-sample shape of the first batch the model ran (as Keras builds on first call):
    what export and predict use for a Sequential built without ``input_shape``."""
    input_transform: Any = None
    """How raw images become this model's input (e.g. ``Normalize``): set by ``fit`` from its
    loader, saved in checkpoints, applied by ``predict``/``evaluate`` to raw arrays."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.layers = list(layers)
        self._name_layers()

    def _name_layers(self) -> None:
        counts: dict[str, int] = {}
        seen: set[int] = set()
        for layer in self.layers:
            if id(layer) in seen:
                raise ValueError(f"{layer!r} appears twice in one model; create a second layer")
            seen.add(id(layer))
            base = type(layer).__name__.lower()
            counts[base] = counts.get(base, 0) + 1
            if not layer.name:
                layer.name = f"{base}_{counts[base]}"
        self._check_each_layer_once()

    def _check_each_layer_once(self) -> None:
        """One line naming a layer held twice anywhere in the tree (in two blocks, or a block
        and the model): a layer keeps one forward's values for its backward, so a second use
        would silently give wrong gradients."""
        where: dict[int, str] = {}
        stack: list[tuple[str, Layer]] = [("", self)]
        while stack:
            path, layer = stack.pop()
            for name, child in layer.named_children():
                full = f"{path}.{name}" if path else name
                if id(child) in where:
                    raise ValueError(f"{child!r} appears twice in one model (as {where[id(child)]}"
                                     f" and as {full}); create a second layer")
                where[id(child)] = full
                stack.append((full, child))

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        for layer in self.layers:
            yield layer.name, layer

    # --- forward and backward -------------------------------------------------------------
    def forward(self, x: Any, training: bool | None = None, check: bool = True) -> Any:
        """The model's output for a batch x; ``training`` sets the mode for this call only
        (None: each layer's ``train()``/``eval()`` setting); ``check`` scans x for NaN/inf."""
        x = self._accept(x, check)
        if self.__dict__.get("seen_input_shape") is None and not modes.is_inside_model():
            self.seen_input_shape = tuple(int(s) for s in x.shape[1:])
        with modes.training_mode(training):
            count = 1 if modes.is_inside_model() else parallel.split_count(self, x, self.workers)
            if count < 2:
                with modes.inside_model():
                    y = self.forward_layers(x)
                self.save_for_backward(None, None)
                return y
            replicas = self.__dict__.get("_replicas")
            if replicas is None or replicas.count != count:
                replicas = self._replicas = parallel.Replicas(self, count)
            with modes.inside_model():
                y, slices = replicas.forward(x)
            self.save_for_backward(replicas, slices)
            return y

    def backward(self, grad_out: Any, input_grad: bool = False) -> Any:
        """Back-propagate dL/dy through the model (as its forward ran: whole or split) and add
        into every parameter's grad. dL/dx of the model's input is computed and returned only
        with ``input_grad=True`` (as in PyTorch, where inputs do not require grad by default);
        otherwise the first layers skip it and this returns None."""
        replicas, slices = self.pop_saved()
        if replicas is None:
            return self.backward_layers(grad_out, input_grad)
        return replicas.backward(grad_out, slices, input_grad)

    def forward_layers(self, x: Any) -> Any:
        raise NotImplementedError

    def backward_layers(self, grad_out: Any, input_grad: bool) -> Any:
        raise NotImplementedError

    def _accept(self, x: Any, check: bool) -> Any:
        """x as an array of the parameters' module, checked when ``check``."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{type(self).__name__}: expected an array (N, ...), got "
                            f"{type(x).__name__}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: expected a batch of at least one sample "
                             f"(N, ...), got shape {tuple(x.shape)}")
        declared = self.declared_input_shape()
        if declared is not None and tuple(x.shape[1:]) != declared:
            raise ValueError(f"{type(self).__name__}: expected inputs of shape (N, "
                             f"{', '.join(map(str, declared))}) as the model was built, got "
                             f"{tuple(x.shape)}")
        params = self.parameters()
        if params:
            xp = backend.get_array_module(params[0].data)
            if backend.get_array_module(x) is not xp:
                x = backend.to_numpy(x) if xp.__name__ == "numpy" else xp.asarray(x)
        if check and not modes.is_inside_model() and x.dtype.kind == "f" and x.size and \
                not bool(backend.get_array_module(x).isfinite(x).all()):
            raise ValueError(f"{type(self).__name__}: input contains NaN or inf")
        return x

    @property
    def per_sample(self) -> bool:  # type: ignore[override]  # computed: from the layers
        return all(layer.per_sample for layer in self.layers)

    @property
    def batch_sums(self) -> bool:  # type: ignore[override]  # computed: from the layers
        return all(layer.per_sample or layer.batch_sums for layer in self.layers)

    def declared_input_shape(self) -> tuple[int, ...] | None:
        """The per-sample input shape the model was built for, or None if not declared."""
        raise NotImplementedError

    # --- training and inference (minicnn.training.loop and .evaluation run the loops) --------
    # Explicit parameters, so help(), IDEs and the API pages (read without running the code)
    # show the real signature; the loop's docstring is copied (_documented_as) so the text has
    # one source. tests/test_docs.py checks that each signature equals its function's.
    @_documented_as(train.fit)
    def fit(self, train_data: Any, epochs: int, optimizer: Any, loss: Any = None,
            val_data: Any = None, schedule: Any = None, callbacks: Iterable[Any] = (),
            batch_size: int = 128, seed: int | None = None, checkpoint: Any = None,
            resume: Any = False, meta: dict[str, Any] | None = None, progress: bool = True,
            log_every: int = 20, eval_batch_size: int = evaluation.EVAL_BATCH_SIZE,
            workers: int | None = None, comm: Any = None, verbose: bool = True,
            early_stop: int | None = None, best_checkpoint: Any = None,
            precision: Any = "fp32", clip_norm: float | None = None,
            clip_value: float | None = None) -> train.History:
        return train.fit(self, train_data, epochs, optimizer, loss=loss, val_data=val_data,
                         schedule=schedule, callbacks=callbacks, batch_size=batch_size,
                         seed=seed, checkpoint=checkpoint, resume=resume, meta=meta,
                         progress=progress, log_every=log_every,
                         eval_batch_size=eval_batch_size, workers=workers, comm=comm,
                         verbose=verbose, early_stop=early_stop,
                         best_checkpoint=best_checkpoint, precision=precision,
                         clip_norm=clip_norm, clip_value=clip_value)

    @_documented_as(evaluation.evaluate)
    def evaluate(self, data: Any, loss: Any = None,
                 batch_size: int = evaluation.EVAL_BATCH_SIZE, transform: Any = None,
                 comm: Any = None) -> evaluation.Evaluation:
        return evaluation.evaluate(self, data, loss=loss, batch_size=batch_size,
                                   transform=transform, comm=comm)

    @_documented_as(evaluation.predict)
    def predict(self, x: Any, batch_size: int = evaluation.EVAL_BATCH_SIZE,
                transform: Any = None) -> Any:
        return evaluation.predict(self, x, batch_size=batch_size, transform=transform)

    @_documented_as(evaluation.predict_proba)
    def predict_proba(self, x: Any, batch_size: int = evaluation.EVAL_BATCH_SIZE,
                      transform: Any = None) -> Any:
        return evaluation.predict_proba(self, x, batch_size=batch_size, transform=transform)

    @_documented_as(evaluation.predict_classes)
    def predict_classes(self, x: Any, batch_size: int = evaluation.EVAL_BATCH_SIZE,
                        transform: Any = None) -> Any:
        return evaluation.predict_classes(self, x, batch_size=batch_size, transform=transform)

    # --- summary --------------------------------------------------------------------------
    def _summary_rows(self) -> list[tuple[Layer, tuple[int, ...]]]:
        raise NotImplementedError

    def layer_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[Layer, tuple[int, ...]]]:
        """(layer, per-sample output shape) for each layer in running order, for a per-sample
        ``input_shape``; ValueError from the first layer that does not fit."""
        raise NotImplementedError

    def summary(self, print_fn: Any = print) -> str:
        """A table of layer, output shape and parameter count, with totals; printed and returned."""
        rows = [(f"{layer.name} ({type(layer).__name__})", "(N, " + ", ".join(map(str, shape))
                 + ")", sum(p.size for p in layer.parameters())) for layer, shape in
                self._summary_rows()]
        width = max([len(r[0]) for r in rows] + [20]) + 2
        shape_width = max([len(r[1]) for r in rows] + [16]) + 2
        line = "-" * (width + shape_width + 12)
        header = f"{'Layer (type)':<{width}}{'Output shape':<{shape_width}}{'Params':>12}"
        out = [line, header, line]
        out += [f"{a:<{width}}{b:<{shape_width}}{c:>12,}" for a, b, c in rows]
        total = sum(p.size for p in self.parameters())
        out += [line, f"Total params: {total:,}", f"Trainable params: {total:,}", line]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text


class Sequential(Network):
    """Layers applied one after another. ``input_shape`` (per sample) enables shape checks at
    construction and ``summary()``.

    ``forward(x)`` takes a batch (N, *input_shape), e.g. float32 (N, 1, 28, 28) for the
    reference CNN, and returns the last layer's output, e.g. class scores (N, 10), in the
    parameters' dtype (float32 by default) on their array module; ``backward(grad)`` takes
    dL/d(output) of the output's shape. ``fit``, ``evaluate`` and ``predict`` take raw images
    (see ``predict``)."""

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int] | None = None):
        super().__init__(list(layers))
        self.input_shape = None if input_shape is None else tuple(input_shape)
        if self.input_shape is not None:
            self._summary_rows()   # fails now, naming the layer, if the shapes do not fit

    def _summary_rows(self):
        if self.input_shape is None:
            raise ValueError("Sequential: pass input_shape=(C, H, W) to infer shapes")
        rows, shape = [], self.input_shape
        for layer in self.layers:
            try:
                shape = layer.infer_output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"Sequential: layer {layer.name} does not fit input shape "
                                 f"{shape}: {exc}") from None
            rows.append((layer, shape))
        return rows

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def layer_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[Layer, tuple[int, ...]]]:
        rows = []
        for layer in self.layers:
            input_shape = tuple(layer.output_shape(input_shape))
            rows.append((layer, input_shape))
        return rows

    def declared_input_shape(self) -> tuple[int, ...] | None:
        return self.input_shape

    def forward_layers(self, x: Any) -> Any:
        """Run the layers in order on a batch x."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward_layers(self, grad_out: Any, input_grad: bool) -> Any:
        """Back-propagate dL/dy through every layer; the first computes dL/dx if input_grad."""
        for i in range(len(self.layers) - 1, -1, -1):
            grad_out = self.layers[i].backward_step(grad_out, input_grad or i > 0)
        return grad_out

    def config(self) -> dict[str, Any]:
        return {"input_shape": self.input_shape,
                "layers": [layer_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        return cls([layer_from_config(c) for c in config["layers"]],
                   input_shape=config.get("input_shape"))

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({layer.name}): {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


class Model(Network):
    """A directed acyclic graph of layers from one ``Input`` to one output tensor.

    ``forward(x)`` takes a batch (N, *shape) of the ``Input(shape)``'s per-sample shape and
    returns the output tensor's batch, in the parameters' dtype (float32 by default); shapes
    are checked while the graph is built."""

    def __init__(self, inputs: SymbolicTensor, outputs: SymbolicTensor):
        if not isinstance(inputs, SymbolicTensor) or inputs.layer is not None:
            raise TypeError("Model: inputs must be the tensor returned by minicnn.Input(shape)")
        self.input_tensor, self.output_tensor = inputs, outputs
        self.order = self._topological_order(outputs)
        if inputs not in self._reachable_inputs():
            raise ValueError("Model: the output does not depend on the given Input")
        super().__init__([t.layer for t in self.order])

    @staticmethod
    def _topological_order(output: SymbolicTensor) -> list[SymbolicTensor]:
        order, seen = [], set()
        stack = [(output, False)]
        while stack:                                 # iterative DFS: deep nets are fine
            tensor, done = stack.pop()
            if done:
                order.append(tensor)
                continue
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            stack.append((tensor, True))
            stack.extend((p, False) for p in reversed(tensor.parents) if id(p) not in seen)
        return [t for t in order if t.layer is not None]

    def declared_input_shape(self) -> tuple[int, ...] | None:
        return self.input_tensor.shape

    def _reachable_inputs(self) -> list[SymbolicTensor]:
        return [p for t in self.order for p in t.parents if p.layer is None]

    def _summary_rows(self):
        return [(t.layer, t.shape) for t in self.order]

    def layer_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[Layer, tuple[int, ...]]]:
        self.output_shape(input_shape)                # the graph's shapes are its input's
        return [(t.layer, tuple(t.shape)) for t in self.order]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != self.input_tensor.shape:
            raise ValueError(f"Model: expected input shape {self.input_tensor.shape}, "
                             f"got {tuple(input_shape)}")
        return self.output_tensor.shape

    def forward_layers(self, x: Any) -> Any:
        """Run the graph on a batch x, each layer after the layers it reads from."""
        values = {id(self.input_tensor): x}
        for t in self.order:
            values[id(t)] = t.layer.forward(*(values[id(p)] for p in t.parents))
        return values[id(self.output_tensor)]

    def backward_layers(self, grad_out: Any, input_grad: bool) -> Any:
        """Back-propagate through the graph in reverse order, summing fan-out gradients; a
        layer that reads only the input computes dL/dx only if input_grad."""
        grads = {id(self.output_tensor): grad_out}
        for t in reversed(self.order):
            grad = grads.pop(id(t), None)
            if grad is None:                         # a tensor nothing downstream uses
                continue
            needed = input_grad or any(p is not self.input_tensor for p in t.parents)
            parent_grads = t.layer.backward_step(grad, needed)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            for parent, g in zip(t.parents, parent_grads):
                if g is None:
                    continue
                key = id(parent)
                grads[key] = g if key not in grads else grads[key] + g
        return grads.get(id(self.input_tensor))

    def config(self) -> dict[str, Any]:
        index = {id(self.input_tensor): 0}
        index.update({id(t): i + 1 for i, t in enumerate(self.order)})
        return {"input_shape": self.input_tensor.shape,
                "nodes": [dict(layer_config(t.layer), inputs=[index[id(p)] for p in t.parents])
                          for t in self.order]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Model:
        tensors = [Input(config["input_shape"])]
        for node in config["nodes"]:
            layer = layer_from_config(node)
            tensors.append(layer(*(tensors[i] for i in node["inputs"])))
        return cls(tensors[0], tensors[-1])
