"""ONNX export: write a trained Sequential or graph Model as an ``.onnx`` file for ONNX Runtime.

    minicnn.export_onnx(model, "model.onnx")                       # float32 (N, C, H, W) in
    minicnn.export_onnx("run/model.npz", "model.onnx", include_preprocessing=True)   # uint8 in

The graph has one input ``input`` (batch axis dynamic, named ``N``) and one output ``output``.
Each layer becomes the ONNX node(s) that compute what its inference forward computes
(BatchNorm2D with its running statistics, Dropout as Identity), named after the layer
(``conv2d_1``; a nested model's layers as ``sequential_1.conv2d_1``); weights are initializers
named as in checkpoints (``conv2d_1.weight``), copied from the host as float32. The onnx
package is imported only here, when exporting (``pip install -e ".[onnx]"``).

A layer of your own exports through a method ``to_onnx(self, ctx, inputs) -> output name``:
``inputs`` are the ONNX value names of its inputs, and ``ctx`` (an ``ExportContext``) adds
constants and nodes. For ``y = x * s``::

    def to_onnx(self, ctx, inputs):
        s = ctx.add_initializer(f"{ctx.name}.s", self.s.data)
        return ctx.add_node("Mul", [inputs[0], s], [ctx.name])[0]

A layer with neither a built-in mapping nor ``to_onnx`` stops the export with one
``ExportError`` naming it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy

from minicnn.core import backend
from minicnn.core.atomic import atomic_write_bytes
from minicnn.data import model_transform
from minicnn.layers import (
    Add,
    AvgPool2D,
    BatchNorm2D,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from minicnn.layers.adaptive_pooling import AdaptiveAvgPool2D
from minicnn.layers.base import Layer
from minicnn.models import Model, Sequential
from minicnn.saving.checkpoint import Checkpoint, LoadedModel, load_checkpoint

__all__ = ["ExportError", "ExportContext", "export_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17
"""The opset written by default: loaded by ONNX Runtime >= 1.13 and most other runtimes."""
MIN_OPSET = 13
"""Oldest opset offered: before 13, Softmax normalised over all axes from ``axis`` on."""
INSTALL_HINT = 'pip install -e ".[onnx]"'


class ExportError(ValueError):
    """The model cannot be written as ONNX (a layer without a mapping, a bad opset, no onnx
    package); the message is one line naming the layer or the setting."""


def _onnx() -> Any:
    """The onnx module, or one ExportError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package, which is not installed: "
                          f"{INSTALL_HINT} (or pip install onnx)") from None
    return onnx


class ExportContext:
    """The graph being built, as a ``to_onnx(ctx, inputs)`` hook sees it.

    ``ctx.name`` is the ONNX name of the layer being exported; ``ctx.opset`` the opset written.
    """

    def __init__(self, onnx: Any, opset: int):
        self.onnx, self.opset, self.name = onnx, opset, ""
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._taken: set[str] = {"input", "output"}     # value and initializer names

    def fresh_name(self, base: str) -> str:
        """``base`` if no value or initializer is named so yet, else ``base_2``, ``base_3``...;
        the name returned is reserved."""
        name, i = base, 1
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def add_initializer(self, name: str, array: Any) -> str:
        """Store ``array`` (either backend; floating point written as float32) as a constant
        under a fresh name made from ``name``; return that name."""
        host = backend.to_numpy(array)
        if host.dtype.kind == "f":
            host = host.astype(numpy.float32)
        name = self.fresh_name(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(host, name))
        return name

    def add_node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
                 **attrs: Any) -> list[str]:
        """Append the node ``op_type(inputs) -> outputs`` with attributes ``attrs``; each output
        name is made fresh (use the names returned) and the node is named after its first."""
        outputs = [self.fresh_name(o) for o in outputs]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outputs,
                                                     name=outputs[0], **attrs))
        return outputs


# --------------------------------------------------------------------------- built-in layers

def _conv(ctx: ExportContext, layer: Conv2D, x: str) -> str:
    args = [x, ctx.add_initializer(f"{ctx.name}.weight", layer.weight.data)]
    if layer.bias is not None:
        args.append(ctx.add_initializer(f"{ctx.name}.bias", layer.bias.data))
    top, left, bottom, right = layer.pads          # ONNX's order: begins, then ends
    return ctx.add_node("Conv", args, [ctx.name], kernel_shape=list(layer.kernel_size),
                        strides=list(layer.stride), pads=[top, left, bottom, right],
                        dilations=list(layer.dilation), group=layer.groups)[0]


def _dense(ctx: ExportContext, layer: Dense, x: str) -> str:
    """Gemm computes x @ W + b (W is (in, out): transB=0), then the fused activation."""
    args = [x, ctx.add_initializer(f"{ctx.name}.weight", layer.weight.data)]
    if layer.bias is not None:
        args.append(ctx.add_initializer(f"{ctx.name}.bias", layer.bias.data))
    z = ctx.add_node("Gemm", args, [ctx.name], transB=0)[0]
    act = layer.activation
    return z if act is None else \
        export_layer(ctx, act, [z], f"{ctx.name}.{type(act).__name__.lower()}")


def _pool(ctx: ExportContext, layer: MaxPool2D | AvgPool2D, x: str) -> str:
    """MaxPool (with dilations) / AveragePool (with count_include_pad) with minicnn's geometry:
    symmetric padding, where max padding never wins and average padding counts as zeros, and
    ceil_mode as PyTorch's (ONNX Runtime and onnx's shape inference drop a last window starting
    in the right padding too). ceil_mode is written 0 when the layer's input shape (known from
    the model) gives as many windows either way, so every runtime agrees."""
    ph, pw = layer.padding
    ceil, input_hw = layer.ceil_mode, getattr(layer, "_input_hw", None)
    if ceil and input_hw is not None:
        from minicnn.layers.pooling import pool_output_size

        ceil = any(pool_output_size(n, k, s, p, d, True) != pool_output_size(n, k, s, p, d)
                   for n, k, s, p, d in zip(input_hw, layer.kernel_size, layer.stride,
                                            layer.padding, layer.dilation))
    attrs: dict[str, Any] = {"kernel_shape": list(layer.kernel_size),
                             "strides": list(layer.stride), "pads": [ph, pw, ph, pw],
                             "ceil_mode": int(ceil)}
    if isinstance(layer, MaxPool2D):
        return ctx.add_node("MaxPool", [x], [ctx.name], dilations=list(layer.dilation),
                            **attrs)[0]
    return ctx.add_node("AveragePool", [x], [ctx.name],
                        count_include_pad=int(layer.count_include_pad), **attrs)[0]


def _global_avg_pool(ctx: ExportContext, layer: GlobalAvgPool2D, x: str) -> str:
    pooled = ctx.add_node("GlobalAveragePool", [x], [f"{ctx.name}.pool"])[0]   # (N, C, 1, 1)
    return ctx.add_node("Flatten", [pooled], [ctx.name], axis=1)[0]


def _adaptive_avg_pool(ctx: ExportContext, layer: AdaptiveAvgPool2D, x: str) -> str:
    """GlobalAveragePool for a 1x1 output, AveragePool when the input (its shape known from the
    model's) divides into equal windows; unequal windows have no ONNX operator: ExportError."""
    hw, (oh, ow) = getattr(layer, "_input_hw", None), layer.output_size
    if (oh, ow) == (1, 1):
        return ctx.add_node("GlobalAveragePool", [x], [ctx.name])[0]
    if hw is None:
        raise ExportError(f"export_onnx: {layer.label()}: input shape unknown (build the model "
                          "with input_shape=(C, H, W))")
    h, w = hw
    if h % oh or w % ow:
        raise ExportError(f"export_onnx: {layer.label()}: input {h}x{w} does not divide into "
                          f"{oh}x{ow} equal windows, and ONNX has no operator for unequal ones")
    kernel = [h // oh, w // ow]
    return ctx.add_node("AveragePool", [x], [ctx.name], kernel_shape=kernel, strides=kernel,
                        pads=[0, 0, 0, 0], ceil_mode=0, count_include_pad=0)[0]


def _batch_norm(ctx: ExportContext, layer: BatchNorm2D, x: str) -> str:
    """Inference form: the running mean and variance."""
    state = layer.state_arrays()                    # what checkpoints save: the one walk's
    args = [x] + [ctx.add_initializer(f"{ctx.name}.{key}", value) for key, value in (
        ("weight", layer.weight.data), ("bias", layer.bias.data),
        ("running_mean", state["running_mean"]), ("running_var", state["running_var"]))]
    return ctx.add_node("BatchNormalization", args, [ctx.name], epsilon=layer.eps)[0]


def _add(ctx: ExportContext, layer: Add, *xs: str) -> str:
    """((x0 + x1) + x2) + ...: one Add node per input after the first, in minicnn's order."""
    total = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        total = ctx.add_node("Add", [total, x], [ctx.name if i == len(xs) - 1 else
                                                 f"{ctx.name}.{i}"])[0]
    return total


def _simple(op_type: str, **attrs: Callable[[Any], Any]) -> Callable[..., str]:
    """One node of ``op_type`` on the layer's inputs; attribute values read from the layer."""
    def export(ctx: ExportContext, layer: Layer, *xs: str) -> str:
        return ctx.add_node(op_type, list(xs), [ctx.name],
                            **{k: get(layer) for k, get in attrs.items()})[0]
    return export


BUILTIN: dict[type, Callable[..., str]] = {
    Conv2D: _conv, Dense: _dense, BatchNorm2D: _batch_norm, Add: _add,
    MaxPool2D: _pool, AvgPool2D: _pool,
    GlobalAvgPool2D: _global_avg_pool, AdaptiveAvgPool2D: _adaptive_avg_pool,
    Flatten: _simple("Flatten", axis=lambda layer: 1),       # C order, as minicnn's reshape
    Concatenate: _simple("Concat", axis=lambda layer: layer.axis),
    ReLU: _simple("Relu"), Sigmoid: _simple("Sigmoid"), Tanh: _simple("Tanh"),
    LeakyReLU: _simple("LeakyRelu", alpha=lambda layer: layer.negative_slope),
    Softmax: _simple("Softmax", axis=lambda layer: layer.axis),
    Identity: _simple("Identity"), Dropout: _simple("Identity"),    # inference: no dropout
}
"""The mapping of minicnn's own layers, by exact class (a subclass may change the math)."""


def export_layer(ctx: ExportContext, layer: Layer, inputs: Sequence[str], name: str) -> str:
    """Add the nodes computing ``layer`` on the values ``inputs``, named ``name``; return the
    name of its output: through its ``to_onnx`` hook, else the built-in mapping."""
    outer, ctx.name = ctx.name, name
    try:
        if hasattr(layer, "to_onnx"):
            outputs = layer.to_onnx(ctx, list(inputs))
        elif isinstance(layer, (Sequential, Model)):
            outputs = _export_network(ctx, layer, inputs[0], f"{name}.")
        elif type(layer) in BUILTIN:
            outputs = BUILTIN[type(layer)](ctx, layer, *inputs)
        else:
            raise ExportError(f"export_onnx: layer {layer.label()} has no ONNX mapping; give "
                              f"{type(layer).__name__} a to_onnx(ctx, inputs) method (see "
                              "minicnn.onnx.export)")
    finally:
        ctx.name = outer
    outputs = [outputs] if isinstance(outputs, str) else list(outputs or [])
    if len(outputs) != 1 or not isinstance(outputs[0], str):
        raise ExportError(f"export_onnx: {layer.label()}.to_onnx must return the name of its "
                          f"one output, got {outputs!r}")
    return outputs[0]


def _export_network(ctx: ExportContext, model: Sequential | Model, x: str, prefix: str) -> str:
    """The layers of a Sequential in order, or of a Model in topological order."""
    if isinstance(model, Sequential):
        for layer in model.layers:
            x = export_layer(ctx, layer, [x], prefix + layer.name)
        return x
    values = {id(model.input_tensor): x}
    for t in model.order:
        values[id(t)] = export_layer(ctx, t.layer, [values[id(p)] for p in t.parents],
                                     prefix + t.layer.name)
    return values[id(model.output_tensor)]


# --------------------------------------------------------------------------- preprocessing

def _preprocess(ctx: ExportContext, transform: dict[str, Any] | None, x: str) -> str:
    """uint8 pixels -> the model's float32 input, with minicnn's own arithmetic (so the values
    are bit-identical): ToFloat is x * (1/255); Normalize(mean, std) is (x/255 - mean) / std,
    computed as x * (1/255/std) - mean/std."""
    spec = transform or {}
    kind = spec.get("class", "ToFloat")
    if kind not in ("ToFloat", "Normalize"):
        raise ExportError(f"export_onnx: cannot export the input transform {transform!r} "
                          "(expected ToFloat or Normalize)")
    x = ctx.add_node("Cast", [x], ["preprocess.cast"], to=ctx.onnx.TensorProto.FLOAT)[0]
    std = float(spec["std"]) if kind == "Normalize" else 1.0
    scale = ctx.add_initializer("preprocess.scale", numpy.float32(1.0 / 255.0 / std))
    x = ctx.add_node("Mul", [x, scale], ["preprocess.scaled"])[0]
    if kind == "Normalize":
        shift = ctx.add_initializer("preprocess.shift", numpy.float32(spec["mean"] / std))
        x = ctx.add_node("Sub", [x, shift], ["preprocess.normalized"])[0]
    return x


# --------------------------------------------------------------------------- the entry point

def _resolve(model: Any, include_preprocessing: Any
             ) -> tuple[Sequential | Model, dict[str, Any] | None]:
    """(the model, the transform config to build in, or None). True takes the model's own
    transform (``minicnn.data.model_transform``: set by fit, restored by load)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model)
    if isinstance(model, Checkpoint):
        model = model.model
    if not isinstance(model, (Sequential, Model)):
        raise ExportError(f"export_onnx: expected a Sequential, a Model, a Checkpoint or a "
                          f"checkpoint path, got {type(model).__name__}")
    if include_preprocessing is False or include_preprocessing is None:
        return model, None
    if include_preprocessing is True:
        transform = model_transform(model)
        if transform is None or not hasattr(transform, "config"):
            raise ExportError(f"export_onnx: include_preprocessing=True: the {type(model).__name__}"
                              " has no input transform (fit sets it from its loader, load "
                              "restores it); pass the transform itself (e.g. "
                              "include_preprocessing=Normalize(0.1307, 0.3081))")
        return model, transform.config()
    if hasattr(include_preprocessing, "config"):
        return model, include_preprocessing.config()
    if isinstance(include_preprocessing, dict):
        return model, include_preprocessing
    raise ExportError("export_onnx: include_preprocessing must be a bool, a transform or its "
                      f"config dict, got {include_preprocessing!r}")


def export_onnx(model: Layer | LoadedModel | Checkpoint | str | os.PathLike,
                path: str | os.PathLike,
                opset: int | None = None, include_preprocessing: Any = False, *,
                input_shape: Sequence[int] | None = None) -> Path:
    """Write ``model`` (a Sequential or Model, a ``Checkpoint``, or a checkpoint's path) to the
    ONNX file ``path``, atomically, and return the path.

    The input is float32 (N, *input_shape), or with ``include_preprocessing`` uint8 pixels that
    the graph converts as the training transform did: True takes the model's own
    (``model.input_transform``, set by fit and restored by load; ExportError without one), or
    pass a transform (``Normalize``) or its config.
    ``opset`` defaults to ``DEFAULT_OPSET``; ``input_shape`` (per sample) is needed only for a
    Sequential built without one that has not run a batch yet. The graph is checked with
    ``onnx.checker`` before writing.
    Raises ExportError (a ValueError) with one line naming the layer or the setting.
    """
    model, transform = _resolve(model, include_preprocessing)
    onnx = _onnx()
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"export_onnx: opset must be an int from {MIN_OPSET} to {newest} "
                          f"(this onnx package's newest), got {opset!r}")
    shape = input_shape or getattr(model, "input_shape", None) or \
        getattr(getattr(model, "input_tensor", None), "shape", None) or \
        getattr(model, "seen_input_shape", None)          # the shape of the first batch it ran
    if shape is None:
        raise ExportError("export_onnx: the Sequential has no input_shape and has not run a "
                          "batch yet; build it with input_shape=(C, H, W), run it once, or "
                          "pass input_shape=")
    shape = tuple(int(s) for s in shape)
    out_shape = model.output_shape(shape)

    ctx = ExportContext(onnx, opset)
    x = _preprocess(ctx, transform, "input") if transform is not None else "input"
    y = _export_network(ctx, model, x, "")
    produced = {o for node in ctx.nodes for o in node.output}
    if y in produced:                                 # rename the last value to "output"
        for node in ctx.nodes:
            node.input[:] = ["output" if v == y else v for v in node.input]
            node.output[:] = ["output" if v == y else v for v in node.output]
    else:                                             # a model that computes nothing
        ctx.nodes.append(onnx.helper.make_node("Identity", [y], ["output"], name="output"))

    helper, tp = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        ctx.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", tp.UINT8 if transform else tp.FLOAT,
                                       ["N", *shape])],
        [helper.make_tensor_value_info("output", tp.FLOAT, ["N", *out_shape])],
        initializer=ctx.initializers)
    opset_id = helper.make_opsetid("", opset)
    proto = helper.make_model(graph, opset_imports=[opset_id], producer_name="minicnn",
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: the exported graph is not valid ONNX ({first})") from None
    return atomic_write_bytes(path, proto.SerializeToString())
