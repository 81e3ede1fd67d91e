"""The ONNX operators ``import_onnx`` maps onto minicnn layers, one function per operator.

Each function gets the node and the graph so far and returns the symbolic tensor(s) of the
node's outputs; what minicnn lacks (an attribute value, a constant where a layer needs a
computed tensor, a rank) is refused with ``node.refuse(...)``: one ``OnnxImportError`` line
naming the node, the operator and what is missing. Shapes here are per sample (the batch axis
is implicit), so an ONNX axis ``a`` of a rank-r tensor is ``a`` in minicnn's full-tensor
coordinates (batch included) and ``a - 1`` in a symbolic tensor's shape.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy

from minicnn.core.symbolic import SymbolicTensor
from minicnn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.dropout import Dropout
from minicnn.layers.flatten import Flatten
from minicnn.layers.merge import Add, Concatenate
from minicnn.layers.normalization import BatchNorm2D
from minicnn.layers.pooling import AvgPool2D, MaxPool2D
from minicnn.onnx.import_context import (
    ImportContext,
    NodeView,
    full_shape,
    set_parameter,
    state_array,
)
from minicnn.onnx.import_fold import BATCH

Outputs = list[SymbolicTensor | None]
ImportOp = Callable[[ImportContext, NodeView], Outputs]


def _image(ctx: ImportContext, node: NodeView) -> SymbolicTensor:
    """Input 0 as an NCHW image tensor."""
    x = ctx.tensor(node, 0)
    if len(x.shape) != 3:
        node.refuse(f"input of shape {full_shape(x)}: minicnn's layers here are 2-D (N, C, H, W)")
    return x


def _pair(values: list[int]) -> tuple[int, int]:
    if len(values) != 2:
        raise ValueError(f"expected 2 values for a 2-D window, got {values}")
    return int(values[0]), int(values[1])


def _only_first_output(ctx: ImportContext, node: NodeView) -> None:
    for i, name in enumerate(node.outputs[1:], start=1):
        if ctx.used(name):
            node.refuse(f"output {i} ({name!r}) is used; minicnn computes only output 0")


def _pads(node: NodeView, size: tuple[int, int], kernel: list[int], strides: list[int],
          dilations: list[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from ``pads`` or ``auto_pad`` (SAME_UPPER puts the odd
    cell at the end, SAME_LOWER at the start, as ONNX defines)."""
    auto = node.attr("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = node.ints("pads", [0, 0, 0, 0])
        if len(pads) != 4:
            node.refuse(f"pads {pads}: expected 4 values for a 2-D window")
        if min(pads) < 0:
            node.refuse(f"negative pads {pads}")
        return pads[0], pads[1], pads[2], pads[3]
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        node.refuse(f"auto_pad {auto!r}")
    begin, end = [], []
    for s, k, st, d in zip(size, kernel, strides, dilations):
        total = max((math.ceil(s / st) - 1) * st + (k - 1) * d + 1 - s, 0)
        small, big = total // 2, total - total // 2
        begin.append(big if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else big)
    return begin[0], begin[1], end[0], end[1]


def _symmetric(node: NodeView, pads: tuple[int, int, int, int]) -> tuple[int, int]:
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        node.refuse(f"asymmetric pads {list(pads)} (begin {[top, left]} != end "
                    f"{[bottom, right]}): minicnn pads both sides alike")
    return top, left


def _window(node: NodeView, x: SymbolicTensor) -> tuple[tuple[int, int], tuple[int, int],
                                                         tuple[int, int], tuple[int, int]]:
    """kernel_shape, strides (ONNX's default 1), symmetric padding and dilations of a
    pooling node."""
    kernel = node.ints("kernel_shape", [])
    if len(kernel) != 2:
        node.refuse(f"kernel_shape {kernel}: minicnn pools 2-D windows")
    strides = node.ints("strides", [1, 1])
    dilations = node.ints("dilations", [1, 1])
    pads = _symmetric(node, _pads(node, (x.shape[1], x.shape[2]), kernel, strides, dilations))
    return _pair(kernel), _pair(strides), pads, _pair(dilations)


# --------------------------------------------------------------------------- convolution, dense

def _same_pads(kernel: list[int], strides: list[int], dilations: list[int]) -> tuple[int, ...]:
    """The pads of Conv2D's padding='same' (stride 1, the odd cell at the bottom/right, as
    ONNX's SAME_UPPER), or () where 'same' does not apply."""
    if strides != [1, 1]:
        return ()
    totals = [d * (k - 1) for d, k in zip(dilations, kernel)]
    return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2,
            totals[1] - totals[1] // 2)


def _conv_padding_fits(pads: tuple[int, int, int, int], kernel: list[int], strides: list[int],
                       dilations: list[int]) -> bool:
    """Whether Conv2D's own ``padding`` makes these pads (symmetric, or 'same')."""
    return (pads[0], pads[1]) == (pads[2], pads[3]) or \
        pads == _same_pads(kernel, strides, dilations)


def _conv_padding(node: NodeView, pads: tuple[int, int, int, int], kernel: list[int],
                  strides: list[int], dilations: list[int]) -> tuple[int, int] | str:
    """Conv2D's ``padding``: a (top, left) pair when symmetric; 'same' for the asymmetric pads
    it makes."""
    top, left, bottom, right = pads
    if (top, left) == (bottom, right):
        return top, left
    if pads == _same_pads(kernel, strides, dilations):
        return "same"
    return _symmetric(node, pads)


def conv(ctx: ImportContext, node: NodeView) -> Outputs:
    x = _image(ctx, node)
    w = ctx.const(node, 1, "weight")
    b = ctx.optional_const(node, 2, "bias")
    if w.ndim != 4:
        node.refuse(f"weight of shape {w.shape}: minicnn convolves 2-D images")
    group = int(node.attr("group", 1))
    kernel = node.ints("kernel_shape", list(w.shape[2:]))
    if kernel != list(w.shape[2:]):
        node.refuse(f"kernel_shape {kernel} does not match the weight's {list(w.shape[2:])}")
    strides, dilations = node.ints("strides", [1, 1]), node.ints("dilations", [1, 1])
    if group < 1 or w.shape[1] * group != x.shape[0]:
        node.refuse(f"weight of shape {w.shape} with group={group} for an input of "
                    f"{x.shape[0]} channels")
    padding = _conv_padding(node, _pads(node, (x.shape[1], x.shape[2]), kernel, strides,
                                        dilations), kernel, strides, dilations)
    layer = Conv2D(x.shape[0], int(w.shape[0]), _pair(kernel), stride=_pair(strides),
                   padding=padding, dilation=_pair(dilations), groups=group,
                   bias=b is not None)
    set_parameter(node, layer.weight, w, "weight")
    if b is not None:
        set_parameter(node, layer.bias, b, "bias")
    return [layer(x)]


def _dense(node: NodeView, x: SymbolicTensor, weight: Any, bias: Any) -> SymbolicTensor:
    """Dense(in, out) with weight (in, out) and bias broadcast to (out,)."""
    if len(x.shape) != 1:
        node.refuse(f"input of shape {full_shape(x)}: minicnn's Dense takes (N, features)")
    if weight.ndim != 2 or weight.shape[0] != x.shape[0]:
        node.refuse(f"weight of shape {weight.shape} for {x.shape[0]} input features")
    out = int(weight.shape[1])
    if bias is not None:
        try:
            bias = numpy.broadcast_to(bias, (1, out)).reshape(out)
        except ValueError:
            node.refuse(f"bias of shape {bias.shape} does not broadcast to ({out},) "
                        "(minicnn's Dense adds one bias per output feature)")
    layer = Dense(int(weight.shape[0]), out, bias=bias is not None)
    set_parameter(node, layer.weight, weight, "weight")
    if bias is not None:
        set_parameter(node, layer.bias, bias, "bias")
    return layer(x)


def gemm(ctx: ImportContext, node: NodeView) -> Outputs:
    """Y = alpha * A @ B' + beta * C -> Dense with weight alpha * B' (in, out), bias beta * C."""
    x = ctx.tensor(node, 0)
    if node.attr("transA", 0):
        node.refuse("transA=1: the input of minicnn's Dense is (N, features)")
    b = ctx.const(node, 1, "B")
    c = ctx.optional_const(node, 2, "C")
    if b.ndim != 2:
        node.refuse(f"B of shape {b.shape}: expected a matrix")
    weight = b.T if node.attr("transB", 0) else b
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        weight = weight * weight.dtype.type(alpha)
    if c is not None and beta != 1.0:
        c = c * c.dtype.type(beta)
    return [_dense(node, x, weight, c)]


def matmul(ctx: ImportContext, node: NodeView) -> Outputs:
    """x @ B with B constant -> Dense; followed by its only reader Add(·, constant), that Add
    becomes the Dense's bias (PyTorch's Linear as MatMul + Add)."""
    x = ctx.tensor(node, 0)
    weight = ctx.const(node, 1, "B")
    readers = ctx.consumers.get(node.outputs[0], [])
    bias, add = None, None
    if len(readers) == 1 and node.outputs[0] not in ctx.graph_outputs:
        reader = ctx.nodes[readers[0]]
        other = [n for n in reader.inputs if n != node.outputs[0]]
        if reader.op_type == "Add" and len(reader.inputs) == 2 and len(other) == 1 and \
                other[0] in ctx.consts:
            bias, add = ctx.consts[other[0]], reader
    y = _dense(node, x, weight, bias)
    if add is not None:
        ctx.fused[add.index] = y
    return [y]


# --------------------------------------------------------------------------- pooling, norm

def max_pool(ctx: ImportContext, node: NodeView) -> Outputs:
    x = _image(ctx, node)
    _only_first_output(ctx, node)
    kernel, strides, pads, dilations = _window(node, x)
    return [MaxPool2D(kernel, stride=strides, padding=pads, dilation=dilations,
                      ceil_mode=bool(node.attr("ceil_mode", 0)))(x)]


def average_pool(ctx: ImportContext, node: NodeView) -> Outputs:
    x = _image(ctx, node)
    kernel, strides, pads, dilations = _window(node, x)
    if dilations != (1, 1):
        node.refuse(f"dilations {list(dilations)}: minicnn's AvgPool2D has no dilation")
    return [AvgPool2D(kernel, stride=strides, padding=pads,
                      ceil_mode=bool(node.attr("ceil_mode", 0)),
                      count_include_pad=bool(node.attr("count_include_pad", 0)))(x)]


def global_average_pool(ctx: ImportContext, node: NodeView) -> Outputs:
    """(N, C, H, W) -> (N, C, 1, 1): an AvgPool2D whose window is the whole image."""
    x = _image(ctx, node)
    size = (x.shape[1], x.shape[2])
    return [AvgPool2D(size, stride=size)(x)]


def batch_normalization(ctx: ImportContext, node: NodeView) -> Outputs:
    """Inference form (running statistics) of (N, C, H, W) -> BatchNorm2D."""
    return batch_norm_layer(ctx, node, _image(ctx, node), BatchNorm2D)


def batch_norm_layer(ctx: ImportContext, node: NodeView, x: Any, cls: Any) -> Outputs:
    """A ``cls`` (BatchNorm2D or BatchNorm1D) for the inference form of BatchNormalization on
    ``x``, running statistics loaded; ONNX's momentum m is minicnn's 1 - m."""
    if node.attr("training_mode", 0):
        node.refuse("training_mode=1: minicnn imports the inference form")
    _only_first_output(ctx, node)
    scale, bias, mean, var = (ctx.const(node, i, what) for i, what in
                              enumerate(("scale", "B", "input_mean", "input_var"), start=1))
    momentum = 1.0 - float(node.attr("momentum", 0.9))
    layer = cls(x.shape[0], momentum=momentum, eps=float(node.attr("epsilon", 1e-5)))
    set_parameter(node, layer.weight, scale, "scale")
    set_parameter(node, layer.bias, bias, "B")
    for key, value in (("running_mean", mean), ("running_var", var)):
        if value.shape != (x.shape[0],):
            node.refuse(f"{key} of shape {value.shape}, expected ({x.shape[0]},)")
        setattr(layer, key, state_array(layer.weight.data, value))
    return [layer(x)]


# --------------------------------------------------------------------------- shapes, merges

def flatten(ctx: ImportContext, node: NodeView) -> Outputs:
    x = ctx.tensor(node, 0)
    axis = int(node.attr("axis", 1))
    if axis < 0:
        axis += len(x.shape) + 1
    if axis != 1:
        node.refuse(f"axis={node.attr('axis')}: minicnn's Flatten keeps the batch axis "
                    "(axis=1)")
    if not x.shape:
        node.refuse("a 1-D input (N,): minicnn's Flatten takes (N, ...) of rank 2 or more")
    return [Flatten()(x)]


def reshape(ctx: ImportContext, node: NodeView) -> Outputs:
    """Reshape to (N, -1) -> Flatten; to the shape it already has -> nothing."""
    x = ctx.tensor(node, 0)
    target = [int(v) for v in ctx.const(node, 1, "shape").reshape(-1)]
    allowzero = bool(node.attr("allowzero", 0))
    full = [None] + list(x.shape)                    # None: the batch axis
    resolved: list[int | None] = []
    for i, v in enumerate(target):
        if v == BATCH or (v == 0 and not allowzero and i == 0) or \
                (i == 0 and ctx.batch is not None and v == ctx.batch):
            resolved.append(None if i == 0 else -2)
        elif v == 0 and not allowzero:
            resolved.append(full[i] if i < len(full) else -2)
        else:
            resolved.append(v)
    size = math.prod(x.shape)
    if resolved and resolved[0] == -1 and all(v is not None and v > 0 for v in resolved[1:]) \
            and math.prod(resolved[1:]) == size:          # type: ignore[arg-type]
        resolved[0] = None
    rest = resolved[1:]
    if not resolved or resolved[0] is not None or any(v is None or v < -1 for v in rest) or \
            rest.count(-1) > 1:
        node.refuse(f"a reshape to {target} of {full_shape(x)}: minicnn reshapes only to "
                    "(N, -1) (Flatten), keeping the batch axis")
    if -1 in rest:
        known = math.prod(v for v in rest if v != -1)          # type: ignore[misc]
        if known == 0 or size % known:
            node.refuse(f"cannot reshape {full_shape(x)} to {target}")
        rest[rest.index(-1)] = size // known
    if math.prod(rest) != size:                                  # type: ignore[arg-type]
        node.refuse(f"cannot reshape {full_shape(x)} to {target}")
    if tuple(rest) == x.shape:
        return [x]
    if len(rest) == 1 and x.shape:
        return [Flatten()(x)]
    node.refuse(f"a reshape of {full_shape(x)} to {target}: minicnn reshapes only to (N, -1) "
                "(Flatten)")


def add(ctx: ImportContext, node: NodeView) -> Outputs:
    if any(name in ctx.consts for name in node.inputs):
        node.refuse("adding a constant: minicnn's Add sums computed tensors (a constant is "
                    "taken only as a Gemm/MatMul/Conv bias)")
    a, b = ctx.tensor(node, 0), ctx.tensor(node, 1)
    if a.shape != b.shape:
        node.refuse(f"broadcasting {full_shape(a)} + {full_shape(b)}: minicnn's Add needs one "
                    "shape")
    return [Add()(a, b)]


def concat(ctx: ImportContext, node: NodeView) -> Outputs:
    xs = [ctx.tensor(node, i) for i in range(len(node.inputs))]
    if len(xs) == 1:
        return [xs[0]]
    axis = int(node.attr("axis"))
    if axis < 0:
        axis += len(xs[0].shape) + 1
    if axis == 0:
        node.refuse("axis 0 is the batch axis: minicnn concatenates along axis >= 1")
    return [Concatenate(axis=axis)(*xs)]


# --------------------------------------------------------------------------- activations

def softmax(ctx: ImportContext, node: NodeView) -> Outputs:
    return along_axis(ctx, node, Softmax)


def along_axis(ctx: ImportContext, node: NodeView, cls: Any) -> Outputs:
    """Softmax or LogSoftmax (``cls``) along the node's axis (-1 from opset 13, else 1); before
    opset 13 ONNX normalises over all axes from axis on, which minicnn does only for the last."""
    x = ctx.tensor(node, 0)
    rank = len(x.shape) + 1
    axis = int(node.attr("axis", -1 if node.opset >= 13 else 1))
    if not -rank <= axis < rank:
        node.refuse(f"axis={axis} for an input of rank {rank}")
    axis %= rank
    if node.opset < 13 and axis != rank - 1:
        node.refuse(f"{node.op_type}-{node.opset} with axis={axis} of a rank-{rank} input "
                    f"normalises over all axes from axis on; minicnn's {cls.__name__} over one "
                    "axis")
    return [cls(axis=axis)(x)]


def _activation(make: Callable[[NodeView], Any]) -> ImportOp:
    def op(ctx: ImportContext, node: NodeView) -> Outputs:
        return [make(node)(ctx.tensor(node, 0))]
    return op


def dropout(ctx: ImportContext, node: NodeView) -> Outputs:
    """Dropout(ratio): the identity in inference (as ONNX computes it), dropping in training."""
    x = ctx.tensor(node, 0)
    _only_first_output(ctx, node)
    ratio = float(node.attr("ratio", 0.5)) if node.opset < 12 else \
        float(numpy.asarray(ctx.optional_const(node, 1, "ratio") if len(node.inputs) > 1
                            else 0.5).reshape(-1)[0])
    training = ctx.optional_const(node, 2, "training_mode")
    if training is not None and bool(numpy.asarray(training).reshape(-1)[0]):
        node.refuse("training_mode=true: minicnn imports the inference form")
    return [Dropout(ratio)(x)]


def identity(ctx: ImportContext, node: NodeView) -> Outputs:
    return [ctx.tensor(node, 0)]


OPS: dict[str, ImportOp] = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul,
    "MaxPool": max_pool, "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "BatchNormalization": batch_normalization,
    "Flatten": flatten, "Reshape": reshape, "Add": add, "Concat": concat,
    "Relu": _activation(lambda node: ReLU()), "Sigmoid": _activation(lambda node: Sigmoid()),
    "Tanh": _activation(lambda node: Tanh()),
    "LeakyRelu": _activation(lambda node: LeakyReLU(float(node.attr("alpha", 0.01)))),
    "Softmax": softmax, "Dropout": dropout, "Identity": identity,
}
"""ONNX operator -> its import function (default domain)."""
