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

from typing import Any, Iterable, Sequence

from minicnn import backend
from minicnn.layers.base import LAYER_REGISTRY, Layer


class SymbolicTensor:
    """A placeholder for an activation while a graph is built: its per-sample shape and origin."""

    def __init__(self, shape: tuple[int, ...], layer: Layer | None = None,
                 parents: tuple["SymbolicTensor", ...] = ()):
        self.shape, self.layer, self.parents = tuple(shape), layer, parents

    @classmethod
    def from_layer(cls, layer: Layer, parents: Sequence["SymbolicTensor"]) -> "SymbolicTensor":
        shapes = [p.shape for p in parents]
        try:
            shape = layer.output_shape(*shapes)
        except ValueError as exc:
            raise ValueError(f"cannot connect {layer!r} to input shape(s) "
                             f"{', '.join(map(str, shapes))}: {exc}") from None
        return cls(shape, layer, tuple(parents))

    def __repr__(self) -> str:
        origin = type(self.layer).__name__ if self.layer else "Input"
        return f"SymbolicTensor(shape={self.shape}, from={origin})"


def Input(shape: Sequence[int]) -> SymbolicTensor:
    """The graph's input, with its per-sample shape (batch axis excluded), e.g. (1, 28, 28)."""
    return SymbolicTensor(tuple(int(s) for s in shape))


class Network(Layer):
    """What Sequential and Model share: naming, modes, devices, checks, summary, training."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.layers = list(layers)
        self._name_layers()
        for layer in self.layers:
            layer.check_finite = False

    def _name_layers(self) -> None:
        counts: dict[str, int] = {}
        for layer in self.layers:
            if sum(layer is other for other in self.layers) > 1:
                raise ValueError(f"{layer!r} appears twice in one model; create a second layer")
            base = type(layer).__name__.lower()
            counts[base] = counts.get(base, 0) + 1
            if not layer.name:
                layer.name = f"{base}_{counts[base]}"

    def named_parameters(self, prefix: str = ""):
        for layer in self.layers:
            yield from layer.named_parameters(prefix + layer.name + ".")

    def train(self, mode: bool = True) -> "Network":
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def to(self, backend_name: str) -> "Network":
        for layer in self.layers:
            layer.to(backend_name)
        return self

    def astype(self, dtype: Any) -> "Network":
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.clear_cache()

    def _prepare(self, x: Any, training: bool | None, check: bool) -> None:
        if training is not None:
            self.train(training)
        if check and hasattr(x, "dtype") and x.dtype.kind == "f" and x.size and \
                not bool(backend.xp.isfinite(x).all()):
            raise ValueError(f"{type(self).__name__}: input contains NaN or inf")

    def _set_first_layers_skip_input_grad(self, first: Iterable[Layer], skip: bool) -> None:
        for layer in first:
            if hasattr(layer, "skip_input_grad"):
                layer.skip_input_grad = skip

    # --- summary --------------------------------------------------------------------------
    def _summary_rows(self) -> list[tuple[str, tuple[int, ...], int]]:
        raise NotImplementedError

    def summary(self, print_fn: Any = print) -> str:
        """A table of layer, output shape and parameter count, with totals; printed and returned."""
        rows = [(f"{layer.name} ({type(layer).__name__})", "(N, " + ", ".join(map(str, shape))
                 + ")", sum(p.size for p in layer.parameters())) for layer, shape in
                self._summary_rows()]
        width = max([len(r[0]) for r in rows] + [20]) + 2
        shape_width = max([len(r[1]) for r in rows] + [16]) + 2
        line = "-" * (width + shape_width + 12)
        out = [line, f"{'Layer (type)':<{width}}{'Output shape':<{shape_width}}{'Params':>12}", line]
        out += [f"{a:<{width}}{b:<{shape_width}}{c:>12,}" for a, b, c in rows]
        total = sum(p.size for p in self.parameters())
        out += [line, f"Total params: {total:,}", f"Trainable params: {total:,}", line]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    # --- training (see minicnn.train) -----------------------------------------------------
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """Train the model; see ``minicnn.train.fit`` for the arguments."""
        from minicnn import train
        return train.fit(self, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Loss and accuracy on a data set; see ``minicnn.train.evaluate``."""
        from minicnn import train
        return train.evaluate(self, *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Model outputs for inputs, in batches; see ``minicnn.train.predict``."""
        from minicnn import train
        return train.predict(self, *args, **kwargs)


class Sequential(Network):
    """Layers applied one after another. ``input_shape`` (per sample) enables shape checks at
    construction and ``summary()``."""

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
                shape = layer.output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"Sequential: layer {layer.name} does not fit input shape "
                                 f"{shape}: {exc}") from None
            rows.append((layer, shape))
        return rows

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def forward(self, x: Any, training: bool | None = None, check: bool = True) -> Any:
        """Run the layers in order on a batch x; ``training`` switches the mode when given."""
        self._prepare(x, training, check)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """Back-propagate dL/dy through every layer; returns dL/dx (None if not input_grad)."""
        self._set_first_layers_skip_input_grad(self.layers[:1], not input_grad)
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
        return grad_out

    def config(self) -> dict[str, Any]:
        return {"input_shape": self.input_shape,
                "layers": [_layer_config(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Sequential":
        return cls([layer_from_config(c) for c in config["layers"]],
                   input_shape=config.get("input_shape"))

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({layer.name}): {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


class Model(Network):
    """A directed acyclic graph of layers from one ``Input`` to one output tensor."""

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

    def _reachable_inputs(self) -> list[SymbolicTensor]:
        return [p for t in self.order for p in t.parents if p.layer is None]

    def _summary_rows(self):
        return [(t.layer, t.shape) for t in self.order]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != self.input_tensor.shape:
            raise ValueError(f"Model: expected input shape {self.input_tensor.shape}, "
                             f"got {tuple(input_shape)}")
        return self.output_tensor.shape

    def forward(self, x: Any, training: bool | None = None, check: bool = True) -> Any:
        """Run the graph on a batch x, each layer after the layers it reads from."""
        self._prepare(x, training, check)
        values = {id(self.input_tensor): x}
        for t in self.order:
            values[id(t)] = t.layer.forward(*(values[id(p)] for p in t.parents))
        return values[id(self.output_tensor)]

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """Back-propagate through the graph in reverse order, summing fan-out gradients."""
        first = [t.layer for t in self.order if self.input_tensor in t.parents]
        self._set_first_layers_skip_input_grad(first, not input_grad)
        grads = {id(self.output_tensor): grad_out}
        for t in reversed(self.order):
            grad = grads.pop(id(t), None)
            if grad is None:                         # a tensor nothing downstream uses
                continue
            parent_grads = t.layer.backward(grad)
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
                "nodes": [dict(_layer_config(t.layer), inputs=[index[id(p)] for p in t.parents])
                          for t in self.order]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Model":
        tensors = [Input(config["input_shape"])]
        for node in config["nodes"]:
            layer = layer_from_config(node)
            tensors.append(layer(*(tensors[i] for i in node["inputs"])))
        return cls(tensors[0], tensors[-1])


def _layer_config(layer: Layer) -> dict[str, Any]:
    return {"class": type(layer).__name__, "name": layer.name, "config": layer.config()}


def layer_from_config(entry: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``{"class": name, "config": {...}, "name": ...}``."""
    name = entry.get("class")
    cls = {"Sequential": Sequential, "Model": Model}.get(name) or LAYER_REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}: import the module that defines it "
                         "before loading")
    config = {k: layer_from_config(v) if isinstance(v, dict) and "class" in v else v
              for k, v in entry["config"].items()}
    config = {k: tuple(v) if isinstance(v, list) and k != "layers" and k != "nodes" else v
              for k, v in config.items()}
    layer = cls.from_config(config) if hasattr(cls, "from_config") else cls(**config)
    layer.name = entry.get("name", "")
    return layer
