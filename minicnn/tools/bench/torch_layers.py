"""minicnn layers and models rebuilt in PyTorch, weights and state copied: the bench's twins.

``torch_model_from(model, torch)`` turns a ``Sequential`` into a ``torch.nn.Sequential`` and a
graph ``Model`` into a ``GraphModule`` that runs the same nodes in the same order, so every zoo
model has a twin. Each layer is translated from its config (``layer_config``) by ``MODULES``,
one small function per layer class; its parameters and state (BatchNorm's running statistics)
are copied by name. Every minicnn layer keeps PyTorch's weight layout except Dense, whose
(in, out) weight is transposed into Linear's (out, in). A layer with no entry is refused in
one line. PyTorch is imported only by the caller.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy

from minicnn.core import backend
from minicnn.layers import Layer
from minicnn.layers.base import layer_config
from minicnn.models import Model, Sequential
from minicnn.tools.bench.timing import graph_nodes

Build = Callable[[Any, dict[str, Any], Layer], Any]


def _conv(nn: Any, c: dict[str, Any], layer: Any) -> Any:
    top, left, bottom, right = layer.pads
    conv = nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"], 0,
                     c["dilation"], groups=c["groups"], bias=c["bias"])
    return conv if not any(layer.pads) else \
        nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)


def _conv_transpose(nn: Any, c: dict[str, Any], layer: Any) -> Any:
    return nn.ConvTranspose2d(c["in_channels"], c["out_channels"], c["kernel_size"],
                              c["stride"], c["padding"], c["output_padding"], c["groups"],
                              c["bias"], c["dilation"])


def _pool(cls: str) -> Build:
    def build(nn: Any, c: dict[str, Any], layer: Any) -> Any:
        args = {k: c[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")}
        if cls == "MaxPool2d":
            args["dilation"] = c["dilation"]
        else:
            args["count_include_pad"] = c["count_include_pad"]
        return getattr(nn, cls)(**args)
    return build


def _add(nn: Any, c: dict[str, Any], layer: Any) -> Any:
    class Add(nn.Module):
        def forward(self, *xs: Any) -> Any:
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out
    return Add()


def _global_avg(nn: Any, c: dict[str, Any], layer: Any) -> Any:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


ACTIVATIONS = ("ReLU", "ReLU6", "Sigmoid", "Tanh", "SiLU", "Hardswish", "Identity")
"""Parameter-free activations with no options: the same class name in ``torch.nn``."""

MODULES: dict[str, Build] = {
    "Conv2D": _conv, "ConvTranspose2D": _conv_transpose,
    "Dense": lambda nn, c, layer: nn.Linear(c["in_features"], c["out_features"], c["bias"]),
    "BatchNorm2D": lambda nn, c, layer: nn.BatchNorm2d(c["num_features"], c["eps"],
                                                       c["momentum"]),
    "BatchNorm1D": lambda nn, c, layer: nn.BatchNorm1d(c["num_features"], c["eps"],
                                                       c["momentum"]),
    "MaxPool2D": _pool("MaxPool2d"), "AvgPool2D": _pool("AvgPool2d"),
    "GlobalAvgPool2D": _global_avg, "Flatten": lambda nn, c, layer: nn.Flatten(),
    "Dropout": lambda nn, c, layer: nn.Dropout(c["p"]),
    "Dropout2D": lambda nn, c, layer: nn.Dropout2d(c["p"]),
    "Upsample2D": lambda nn, c, layer: nn.Upsample(
        scale_factor=c["scale_factor"], mode=c["mode"],
        align_corners=c["align_corners"] if c["mode"] == "bilinear" else None),
    "LeakyReLU": lambda nn, c, layer: nn.LeakyReLU(c["negative_slope"]),
    "Add": _add,
}
"""How each minicnn layer class with options or weights becomes a torch module:
``build(torch.nn, config, layer)``; the plain activations are in ``ACTIVATIONS``."""


def _copy_weights(torch: Any, layer: Layer, module: Any) -> None:
    """Copy ``layer``'s parameters and state into ``module`` by name (into the Conv2d of a
    padded convolution's ``Sequential``); Dense's weight transposed."""
    padded = type(layer).__name__ == "Conv2D" and any(layer.pads)  # type: ignore[attr-defined]
    target = module[-1] if padded else module
    for name, value in [*layer.named_parameters(), *layer.named_state()]:
        array = backend.to_numpy(getattr(value, "data", value))
        if type(layer).__name__ == "Dense" and name == "weight":
            array = array.T
        with torch.no_grad():
            getattr(target, name).copy_(torch.from_numpy(numpy.ascontiguousarray(array)))


def torch_layer(layer: Layer, torch: Any) -> Any:
    """The torch module computing what ``layer`` computes, its weights copied; ValueError in one
    line for a layer class with no twin here."""
    entry = layer_config(layer)
    kind = entry["class"]
    if kind in ACTIVATIONS:
        return getattr(torch.nn, kind)()
    build = MODULES.get(kind)
    if build is None:
        raise ValueError(f"bench: no PyTorch equivalent for {layer.label()} ({kind}); known: "
                         f"{', '.join(sorted([*MODULES, *ACTIVATIONS]))}")
    module = build(torch.nn, entry["config"], layer)
    _copy_weights(torch, layer, module)
    activation = getattr(layer, "activation", None)
    if activation is not None:                # Dense(..., activation=...) and friends
        name = type(activation).__name__
        if name not in ACTIVATIONS:
            raise ValueError(f"bench: no PyTorch equivalent for {layer.label()}'s activation "
                             f"{name}")
        module = torch.nn.Sequential(module, getattr(torch.nn, name)())
    return module


def torch_model_from(model: Layer, torch: Any = None) -> Any:
    """A torch module computing exactly what ``model`` (a ``Sequential`` or a graph ``Model``)
    computes, weights and state copied."""
    if torch is None:
        import torch as torch_module
        torch = torch_module
    if isinstance(model, Sequential):
        return torch.nn.Sequential(*(torch_layer(layer, torch) for layer in model.layers))
    if isinstance(model, Model):
        return _graph_module(torch, model)
    raise ValueError(f"bench: expected a Sequential or a graph Model, got "
                     f"{type(model).__name__}")


def _graph_module(torch: Any, model: Model) -> Any:
    """The graph's nodes (``timing.graph_nodes``) as a ``torch.nn.ModuleList``, run in
    minicnn's topological order, each on the outputs of the nodes (or the input, index -1) it
    reads."""
    layers, reads = graph_nodes(model)

    class GraphModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nodes = torch.nn.ModuleList(torch_layer(layer, torch) for layer in layers)

        def forward(self, x: Any) -> Any:
            values: list[Any] = []
            for node, parents in zip(self.nodes, reads):
                values.append(node(*(x if i < 0 else values[i] for i in parents)))
            return values[-1]

    return GraphModule()
