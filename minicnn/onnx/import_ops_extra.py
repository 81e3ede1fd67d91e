"""More ONNX operators for ``import_onnx``, onto the layers that came after the first table
(``minicnn.onnx.import_ops``): the smooth and piecewise activations (x * Sigmoid(x) as SiLU),
LogSoftmax, Clip as ReLU6 or ReLU, PRelu, ConvTranspose, GlobalMaxPool, BatchNormalization
of (N, C) and (N, C, L), LayerNormalization, GroupNormalization, Pad (zeros), Resize and
Upsample (integer scales), Conv with any asymmetric pads (a ZeroPad2D before it)."""
from __future__ import annotations

import math

import numpy

from minicnn.layers.activations import LogSoftmax, Sigmoid
from minicnn.layers.conv_transpose import ConvTranspose2D
from minicnn.layers.layer_norm import GroupNorm, LayerNorm
from minicnn.layers.normalization import BatchNorm1D
from minicnn.layers.padding import ZeroPad2D
from minicnn.layers.piecewise_activations import Hardswish, PReLU, ReLU6
from minicnn.layers.pooling import MaxPool2D
from minicnn.layers.smooth_activations import ELU, GELU, SiLU, Softplus
from minicnn.layers.upsample import Upsample2D
from minicnn.onnx import import_ops
from minicnn.onnx.import_context import (
    ImportContext,
    NodeView,
    full_shape,
    set_parameter,
)
from minicnn.onnx.import_ops import (
    ImportOp,
    Outputs,
    _activation,
    _image,
    _only_first_output,
    _pads,
    _pair,
    _symmetric,
)


def _text(node: NodeView, key: str, default: str) -> str:
    value = node.attr(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _scalar(ctx: ImportContext, node: NodeView, i: int, what: str) -> float | None:
    value = ctx.optional_const(node, i, what)
    if value is None:
        return None
    if value.size != 1:
        node.refuse(f"{what} of shape {value.shape}: expected one value")
    return float(value.reshape(-1)[0])


# --------------------------------------------------------------------------- activations

def clip(ctx: ImportContext, node: NodeView) -> Outputs:
    """Clip(0, 6) -> ReLU6, Clip(0, none) -> ReLU."""
    x = ctx.tensor(node, 0)
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low, high = _scalar(ctx, node, 1, "min"), _scalar(ctx, node, 2, "max")
    if low == 0 and high == 6:
        return [ReLU6()(x)]
    if low == 0 and (high is None or high == math.inf):
        return import_ops.OPS["Relu"](ctx, node)
    node.refuse(f"Clip to [{low}, {high}]: minicnn has ReLU6 (Clip 0..6) and ReLU (Clip 0..)")


def log_softmax(ctx: ImportContext, node: NodeView) -> Outputs:
    return import_ops.along_axis(ctx, node, LogSoftmax)


def prelu(ctx: ImportContext, node: NodeView) -> Outputs:
    """PRelu with one slope, or one per channel (slope (C,), (C, 1, 1) or (1, C, 1, 1)...)."""
    x = ctx.tensor(node, 0)
    slope = ctx.const(node, 1, "slope")
    channels = x.shape[0] if x.shape else 1
    squeezed = slope.reshape(-1)
    per_channel = slope.ndim <= len(x.shape) and squeezed.size == channels and (
        slope.ndim == len(x.shape) and slope.shape[0] == channels or
        slope.ndim == len(x.shape) + 1 and slope.shape[1] == channels)
    if squeezed.size == 1:
        layer = PReLU(1)
    elif per_channel and all(d == 1 for d in slope.shape[slope.ndim - len(x.shape) + 1:]):
        layer = PReLU(channels)
    else:
        node.refuse(f"slope of shape {slope.shape} for {full_shape(x)}: minicnn's PReLU has "
                    "one slope or one per channel (axis 1)")
    set_parameter(node, layer.weight, squeezed, "slope")
    return [layer(x)]


def sigmoid(ctx: ImportContext, node: NodeView) -> Outputs:
    """Sigmoid; x * Sigmoid(x) (PyTorch's SiLU before opset 20 has a node of its own) as one
    SiLU, when the Mul is the Sigmoid's only reader."""
    x = ctx.tensor(node, 0)
    readers = ctx.consumers.get(node.outputs[0], [])
    if len(readers) == 1 and node.outputs[0] not in ctx.graph_outputs:
        mul = ctx.nodes[readers[0]]
        if mul.op_type == "Mul" and sorted(mul.inputs) == sorted([node.inputs[0],
                                                                   node.outputs[0]]):
            y = SiLU()(x)
            ctx.fused[mul.index] = y
            return [None]
    return [Sigmoid()(x)]


def _only_reader(ctx: ImportContext, node: NodeView, op_type: str) -> NodeView | None:
    readers = ctx.consumers.get(node.outputs[0], [])
    if len(readers) != 1 or node.outputs[0] in ctx.graph_outputs:
        return None
    reader = ctx.nodes[readers[0]]
    return reader if reader.op_type == op_type else None


def _other_const(ctx: ImportContext, node: NodeView, name: str) -> float | None:
    """The one-value constant ``node`` takes besides ``name``, or None."""
    others = [n for n in node.inputs if n != name]
    if len(node.inputs) != 2 or len(others) != 1 or others[0] not in ctx.consts or \
            ctx.consts[others[0]].size != 1:
        return None
    return float(ctx.consts[others[0]].reshape(-1)[0])


def erf_gelu(ctx: ImportContext, node: NodeView) -> Outputs:
    """PyTorch's exact GELU before opset 20, x * (erf(x / sqrt 2) + 1) * 0.5 as Div, Erf, Add,
    Mul, Mul (either order of the last two), as one GELU layer; any other Div of a computed
    tensor is refused."""
    x_name = node.inputs[0]
    x = ctx.tensor(node, 0)
    root2 = _other_const(ctx, node, x_name)
    erf = _only_reader(ctx, node, "Erf")
    add = _only_reader(ctx, erf, "Add") if erf else None
    first = _only_reader(ctx, add, "Mul") if add else None
    second = _only_reader(ctx, first, "Mul") if first else None
    if erf and add and first and second and root2 is not None and \
            abs(root2 - math.sqrt(2)) < 1e-6 and _other_const(ctx, add, erf.outputs[0]) == 1 \
            and sorted(first.inputs) == sorted([x_name, add.outputs[0]]) and \
            _other_const(ctx, second, first.outputs[0]) == 0.5:
        y = GELU()(x)
        for chain in (erf, add, first):
            ctx.fused[chain.index] = None
        ctx.fused[second.index] = y
        return [None]
    node.refuse("a Div of a computed tensor: minicnn has no layer for it (PyTorch's GELU "
                "pattern x * (erf(x / sqrt 2) + 1) * 0.5 is recognised)")


def gelu(ctx: ImportContext, node: NodeView) -> Outputs:
    approximate = _text(node, "approximate", "none")
    if approximate not in ("none", "tanh"):
        node.refuse(f"approximate={approximate!r}")
    return [GELU(approximate)(ctx.tensor(node, 0))]


# --------------------------------------------------------------------------- pooling, norms

def global_max_pool(ctx: ImportContext, node: NodeView) -> Outputs:
    """(N, C, H, W) -> (N, C, 1, 1): a MaxPool2D whose window is the whole image."""
    x = _image(ctx, node)
    size = (x.shape[1], x.shape[2])
    return [MaxPool2D(size, stride=size)(x)]


def batch_normalization(ctx: ImportContext, node: NodeView) -> Outputs:
    """(N, C, H, W) -> BatchNorm2D (import_ops); (N, C) and (N, C, L) -> BatchNorm1D."""
    x = ctx.tensor(node, 0)
    if len(x.shape) == 3:
        return import_ops.batch_normalization(ctx, node)
    if len(x.shape) not in (1, 2):
        node.refuse(f"input of shape {full_shape(x)}: minicnn's BatchNorm is 1-D or 2-D")
    return import_ops.batch_norm_layer(ctx, node, x, BatchNorm1D)


def layer_normalization(ctx: ImportContext, node: NodeView) -> Outputs:
    x = ctx.tensor(node, 0)
    _only_first_output(ctx, node)
    rank = len(x.shape) + 1
    axis = int(node.attr("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 1 <= axis < rank:
        node.refuse(f"axis={node.attr('axis', -1)}: minicnn normalises within a sample "
                    "(axis >= 1)")
    shape = tuple(x.shape[axis - 1:])
    scale = ctx.const(node, 1, "scale")
    bias = ctx.optional_const(node, 2, "B")
    layer = LayerNorm(shape, eps=float(node.attr("epsilon", 1e-5)))
    for param, value, what in ((layer.weight, scale, "scale"), (layer.bias, bias, "B")):
        if value is None:
            value = numpy.zeros(shape, numpy.float32)
        try:
            value = numpy.broadcast_to(value, shape)
        except ValueError:
            node.refuse(f"{what} of shape {value.shape} does not broadcast to {shape}")
        set_parameter(node, param, value, what)
    return [layer(x)]


def group_normalization(ctx: ImportContext, node: NodeView) -> Outputs:
    """GroupNormalization: per-channel scale and bias (opset 21), or per-group (opset 18,
    repeated over each group's channels: the same function)."""
    x = ctx.tensor(node, 0)
    if len(x.shape) < 2:
        node.refuse(f"input of shape {full_shape(x)}: expected (N, C, ...)")
    groups, channels = int(node.attr("num_groups")), x.shape[0]
    scale, bias = ctx.const(node, 1, "scale"), ctx.const(node, 2, "bias")
    if node.attr("stash_type", 1) != 1:
        node.refuse("stash_type other than float32")
    layer = GroupNorm(groups, channels, eps=float(node.attr("epsilon", 1e-5)))
    for param, value, what in ((layer.weight, scale, "scale"), (layer.bias, bias, "bias")):
        value = value.reshape(-1)
        if value.size == groups and groups != channels:
            value = numpy.repeat(value, channels // groups)
        set_parameter(node, param, value, what)
    return [layer(x)]


# --------------------------------------------------------------------------- shapes

def pad(ctx: ImportContext, node: NodeView) -> Outputs:
    """Pad with zeros on H and W -> ZeroPad2D(left, right, top, bottom) (negative: crop)."""
    x = _image(ctx, node)
    mode = _text(node, "mode", "constant")
    if mode != "constant":
        node.refuse(f"mode={mode!r}: minicnn pads with zeros (ZeroPad2D)")
    if node.opset < 11:
        pads, value = node.ints("pads", []), float(node.attr("value", 0.0))
        axes = None
    else:
        pads = [int(v) for v in ctx.const(node, 1, "pads").reshape(-1)]
        value = _scalar(ctx, node, 2, "constant_value") or 0.0
        axes_value = ctx.optional_const(node, 3, "axes")
        axes = None if axes_value is None else [int(a) % 4 for a in axes_value.reshape(-1)]
    if value != 0.0:
        node.refuse(f"constant_value={value}: minicnn pads with zeros")
    axes = axes or [0, 1, 2, 3]
    if len(pads) != 2 * len(axes):
        node.refuse(f"pads {pads} for axes {axes}")
    begin = dict(zip(axes, pads[:len(axes)]))
    end = dict(zip(axes, pads[len(axes):]))
    if any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)):
        node.refuse(f"pads {pads}: minicnn pads only H and W (ZeroPad2D)")
    return [ZeroPad2D((begin.get(3, 0), end.get(3, 0), begin.get(2, 0), end.get(2, 0)))(x)]


def conv(ctx: ImportContext, node: NodeView) -> Outputs:
    """Conv; asymmetric pads that Conv2D's own 'same' does not make become a ZeroPad2D
    before a Conv2D without padding."""
    x = _image(ctx, node)
    kernel = node.ints("kernel_shape", list(ctx.const(node, 1, "weight").shape[2:]))
    strides, dilations = node.ints("strides", [1, 1]), node.ints("dilations", [1, 1])
    try:
        pads = import_ops._pads(node, (x.shape[1], x.shape[2]), kernel, strides, dilations)
    except Exception:
        return import_ops.conv(ctx, node)                 # its own message
    if import_ops._conv_padding_fits(pads, kernel, strides, dilations):
        return import_ops.conv(ctx, node)
    top, left, bottom, right = pads
    padded = ZeroPad2D((left, right, top, bottom))(x)
    inner = NodeView(node.index, node.name, node.op_type, list(node.inputs), node.outputs,
                     {k: v for k, v in node.attrs.items() if k not in ("pads", "auto_pad")},
                     node.opset)
    name = f"{node.inputs[0]} (padded)"
    ctx.tensors[name] = padded
    inner.inputs[0] = name
    return import_ops.conv(ctx, inner)


def conv_transpose(ctx: ImportContext, node: NodeView) -> Outputs:
    """ConvTranspose -> ConvTranspose2D; weight (C, O/G, kh, kw) as PyTorch's and ONNX's."""
    x = _image(ctx, node)
    w = ctx.const(node, 1, "weight")
    b = ctx.optional_const(node, 2, "bias")
    if w.ndim != 4:
        node.refuse(f"weight of shape {w.shape}: minicnn convolves 2-D images")
    if node.attr("output_shape") is not None:
        node.refuse("output_shape: give pads and output_padding instead")
    if _text(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
        node.refuse(f"auto_pad={_text(node, 'auto_pad', '')!r}: give pads")
    group = int(node.attr("group", 1))
    kernel = node.ints("kernel_shape", list(w.shape[2:]))
    if kernel != list(w.shape[2:]) or w.shape[0] != x.shape[0]:
        node.refuse(f"weight of shape {w.shape} for an input of {x.shape[0]} channels and "
                    f"kernel_shape {kernel}")
    strides, dilations = node.ints("strides", [1, 1]), node.ints("dilations", [1, 1])
    padding = _symmetric(node, _pads(node, (x.shape[1], x.shape[2]), kernel, strides,
                                     dilations))
    layer = ConvTranspose2D(x.shape[0], int(w.shape[1]) * group, _pair(kernel),
                            stride=_pair(strides), padding=padding,
                            output_padding=_pair(node.ints("output_padding", [0, 0])),
                            groups=group, bias=b is not None, dilation=_pair(dilations))
    set_parameter(node, layer.weight, w, "weight")
    if b is not None:
        set_parameter(node, layer.bias, b, "bias")
    return [layer(x)]


def resize(ctx: ImportContext, node: NodeView) -> Outputs:
    """Resize / Upsample by integer scales on H and W -> Upsample2D (nearest, bilinear)."""
    x = _image(ctx, node)
    if node.op_type == "Upsample":
        scales = node.attr("scales") if node.opset < 9 else ctx.const(node, 1, "scales")
        sizes = None
        mode, transform, rounding = _text(node, "mode", "nearest"), "asymmetric", "floor"
    else:
        if node.opset < 11:
            scales, sizes = ctx.const(node, 1, "scales"), None
        else:
            scales = ctx.optional_const(node, 2, "scales")
            sizes = ctx.optional_const(node, 3, "sizes")
        mode = _text(node, "mode", "nearest")
        transform = _text(node, "coordinate_transformation_mode",
                          "asymmetric" if node.opset < 11 else "half_pixel")
        rounding = _text(node, "nearest_mode", "round_prefer_floor")
        if node.attr("antialias", 0):
            node.refuse("antialias=1")
        if node.attr("axes") is not None:
            node.refuse("axes: minicnn resizes (N, C, H, W) on H and W")
    full = (1, x.shape[0], x.shape[1], x.shape[2])
    if sizes is not None and sizes.size:
        factors = [s / d for s, d in zip(sizes.reshape(-1).tolist(), full)]
    elif scales is not None and len(scales):
        factors = [float(s) for s in numpy.asarray(scales).reshape(-1)]
    else:
        node.refuse("neither scales nor sizes")
    if len(factors) != 4 or factors[0] != 1 or factors[1] != 1 or \
            any(f != int(f) or f < 1 for f in factors[2:]):
        node.refuse(f"scales {factors}: minicnn upsamples H and W by integer factors")
    scale = (int(factors[2]), int(factors[3]))
    if mode == "nearest":
        # source index: floor(d / s) is what half-pixel centres rounded to nearest give for an
        # integer s (no ties), and what asymmetric coordinates floored give
        exact = (transform in ("half_pixel", "pytorch_half_pixel") and
                 rounding in ("round_prefer_floor", "round_prefer_ceil")) or \
            (transform == "asymmetric" and rounding == "floor")
        if not exact:
            node.refuse(f"nearest with coordinate_transformation_mode={transform!r} and "
                        f"nearest_mode={rounding!r}: minicnn's nearest takes floor(d / s)")
        return [Upsample2D(scale, "nearest")(x)]
    if mode in ("linear", "bilinear"):
        if transform in ("half_pixel", "pytorch_half_pixel"):
            return [Upsample2D(scale, "bilinear", align_corners=False)(x)]
        if transform == "align_corners":
            return [Upsample2D(scale, "bilinear", align_corners=True)(x)]
        node.refuse(f"linear with coordinate_transformation_mode={transform!r}: minicnn's "
                    "bilinear is half_pixel or align_corners")
    node.refuse(f"mode={mode!r}: minicnn resizes nearest or bilinear")


EXTRA_OPS: dict[str, ImportOp] = {
    "Elu": _activation(lambda node: ELU(float(node.attr("alpha", 1.0)))),
    "Softplus": _activation(lambda node: Softplus()),
    "HardSwish": _activation(lambda node: Hardswish()),
    "Gelu": gelu, "Clip": clip, "PRelu": prelu, "LogSoftmax": log_softmax,
    "GlobalMaxPool": global_max_pool, "BatchNormalization": batch_normalization,
    "LayerNormalization": layer_normalization, "GroupNormalization": group_normalization,
    "Pad": pad, "Conv": conv, "Resize": resize, "Upsample": resize,
    "ConvTranspose": conv_transpose, "Sigmoid": sigmoid, "Div": erf_gelu,
}
"""Operators added to (or replacing, for Conv and BatchNormalization) ``import_ops.OPS``."""
