"""ONNX import: read an ``.onnx`` file into a minicnn graph ``Model`` whose weights are the
file's initializers.

    model = import_onnx("resnet_tiny.onnx")      # a minicnn.Model, in eval mode
    logits = model.forward(x)                     # x: (N, C, H, W) float32
    model.train(); model.fit(...)                 # it trains like any minicnn model

The graph must have one float32 input whose dimensions are fixed except the first (the batch
axis, which minicnn keeps free) and one output. Each node becomes the layer computing it
(``OPS``, from ``minicnn.onnx.import_ops`` and ``import_ops_extra``: Conv -> Conv2D, Gemm
and MatMul(+Add) -> Dense with its weight as (in, out), BatchNormalization -> BatchNorm2D
with the running statistics, ...);
nodes whose inputs are all constants are evaluated at import time
(``minicnn.onnx.import_fold``), which removes the shape arithmetic PyTorch's exporter leaves.

The file is read within budgets, before anything large is allocated: at most
``MAX_MODEL_BYTES`` on disk, ``MAX_NODES`` nodes (checked before any node is looked at),
``MAX_TENSOR_BYTES`` per constant tensor (declared shape x item size checked against the data
actually stored), no external data files, no subgraphs. Anything else minicnn cannot import
(an operator, an attribute value, a second input) stops the import with one
``OnnxImportError`` line naming the file, the node, its operator and what is missing. The
onnx package is imported only here, when importing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy

from minicnn.core.symbolic import Input
from minicnn.layers.activations import Identity
from minicnn.models import Model
from minicnn.onnx.import_context import ImportContext, NodeView, OnnxImportError
from minicnn.onnx.import_fold import BATCH, FOLDERS, FoldError, fold
from minicnn.onnx.import_ops import OPS as FIRST_OPS
from minicnn.onnx.import_ops_extra import EXTRA_OPS
from minicnn.saving.description import MAX_LAYERS

__all__ = ["OnnxImportError", "import_onnx", "SUPPORTED_OPS", "MAX_MODEL_BYTES", "MAX_NODES",
           "MAX_TENSOR_BYTES"]

MAX_MODEL_BYTES = 2 << 30
"""Largest .onnx file read (2 GiB, protobuf's own limit for one message)."""
MAX_NODES = MAX_LAYERS
"""Most nodes in a graph (10,000: a checkpoint holds at most as many layers)."""
MAX_TENSOR_BYTES = 1 << 30
"""Largest constant tensor (1 GiB, e.g. 256 M float32 weights)."""
OPS = {**FIRST_OPS, **EXTRA_OPS}
"""ONNX operator -> its import function (``import_ops``, then ``import_ops_extra``)."""
SUPPORTED_OPS = frozenset(OPS) | frozenset(FOLDERS)
"""Operators the importer knows: layers (``OPS``) and, on constants, ``FOLDERS``."""
INSTALL_HINT = 'pip install -e ".[onnx]"'

_EXTERNAL = 1                                     # TensorProto.DataLocation.EXTERNAL
_FLOAT = 1                                        # TensorProto.FLOAT
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")


def _onnx(where: str) -> Any:
    try:
        import onnx
    except ImportError:
        raise OnnxImportError(f"{where}: ONNX import needs the onnx package, which is not "
                              f"installed: {INSTALL_HINT} (or pip install onnx)") from None
    return onnx


def _read_model(onnx: Any, path: Path) -> Any:
    """The ModelProto in ``path``, read within the byte budget, external data not followed."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise OnnxImportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size > MAX_MODEL_BYTES:
        raise OnnxImportError(f"{path}: {size:,} bytes is over the budget of "
                              f"{MAX_MODEL_BYTES:,} for an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxImportError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)
    except Exception as exc:                 # DecodeError, RecursionError in nested messages
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    return model


def tensor_to_array(onnx: Any, tensor: Any, where: str) -> numpy.ndarray:
    """A TensorProto as a NumPy array, after checking its declared size against the budget
    and the data it holds (so a 2 GB declared tensor is refused before any allocation)."""
    name = tensor.name or "(unnamed)"
    if tensor.data_location == _EXTERNAL or len(tensor.external_data):
        location = {e.key: e.value for e in tensor.external_data}.get("location", "?")
        raise OnnxImportError(f"{where}: tensor {name!r} keeps its data in the external file "
                              f"{location!r}, which minicnn does not read; save the model with "
                              "its weights inside (onnx.save(model, path, "
                              "save_as_external_data=False))")
    try:
        dtype = numpy.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:
        raise OnnxImportError(f"{where}: tensor {name!r} has data type {tensor.data_type}, "
                              "which minicnn does not read") from None
    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{where}: tensor {name!r} has negative dimensions {dims}")
    count = 1
    for d in dims:
        count *= d
    if dtype.kind not in "fiub" or count * dtype.itemsize > MAX_TENSOR_BYTES:
        raise OnnxImportError(f"{where}: tensor {name!r} of shape {dims} ({dtype}) is over the "
                              f"budget of {MAX_TENSOR_BYTES:,} bytes or not numeric")
    if tensor.HasField("raw_data"):
        stored = len(tensor.raw_data)
        expected = count * dtype.itemsize
    else:
        stored = max(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
        expected = count
    if stored != expected:
        raise OnnxImportError(f"{where}: tensor {name!r} of shape {dims} holds {stored:,} "
                              f"{'bytes' if tensor.HasField('raw_data') else 'values'}, "
                              f"expected {expected:,}")
    try:
        return numpy.array(onnx.numpy_helper.to_array(tensor))
    except Exception as exc:
        raise OnnxImportError(f"{where}: tensor {name!r} cannot be read ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None


def _attributes(onnx: Any, node: Any, label: str, where: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise OnnxImportError(f"{where}: {label}: attribute {attr.name!r} is a subgraph "
                                  "(If/Loop/Scan bodies are not imported)")
        if attr.type == onnx.AttributeProto.TENSOR:
            attrs[attr.name] = tensor_to_array(onnx, attr.t, f"{where}: {label}")
        elif attr.type in (onnx.AttributeProto.TENSORS, onnx.AttributeProto.SPARSE_TENSOR,
                           onnx.AttributeProto.SPARSE_TENSORS):
            raise OnnxImportError(f"{where}: {label}: attribute {attr.name!r} of type "
                                  f"{attr.type} is not read")
        else:
            attrs[attr.name] = onnx.helper.get_attribute_value(attr)
    return attrs


def _opset(model: Any, where: str) -> int:
    versions = {o.domain: int(o.version) for o in model.opset_import}
    version = versions.get("", versions.get("ai.onnx"))
    if version is None:
        raise OnnxImportError(f"{where}: the model imports no version of the default ONNX "
                              "operator set")
    return version


def _data_input(graph: Any, constants: set[str], where: str) -> tuple[str, tuple[int, ...],
                                                                     int | None]:
    """The graph's one non-constant input: name, per-sample shape, static batch (or None)."""
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise OnnxImportError(f"{where}: the graph has {len(inputs)} inputs "
                              f"({', '.join(repr(i.name) for i in inputs) or 'none'}); a "
                              "minicnn model takes one")
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or value.type.tensor_type.elem_type != _FLOAT:
        raise OnnxImportError(f"{where}: input {value.name!r} is not a float32 tensor "
                              f"(minicnn imports float32 models)")
    if not value.type.tensor_type.HasField("shape"):
        raise OnnxImportError(f"{where}: input {value.name!r} has no declared shape")
    dims = value.type.tensor_type.shape.dim
    if len(dims) < 1:
        raise OnnxImportError(f"{where}: input {value.name!r} is a scalar; expected (N, ...)")
    shape = []
    for i, d in enumerate(dims[1:], start=1):
        if not d.HasField("dim_value") or d.dim_value < 1:
            raise OnnxImportError(f"{where}: input {value.name!r} has no fixed size on axis {i} "
                                  f"({d.dim_param or '?'}); only the batch axis may vary")
        shape.append(int(d.dim_value))
    batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else None
    return value.name, tuple(shape), batch


def _shape_of_tensor(node: NodeView, shape: tuple[int, ...]) -> numpy.ndarray:
    """Shape of a computed tensor: its static shape, the batch size as ``BATCH``."""
    full = numpy.array([BATCH] + list(shape), dtype=numpy.int64)
    start, end = node.attr("start", 0), node.attr("end")
    return full[slice(int(start), None if end is None else int(end))]


def _run_node(onnx: Any, ctx: ImportContext, node: NodeView, where: str) -> None:
    if node.index in ctx.fused:
        fused = ctx.fused[node.index]
        if fused is not None:
            ctx.tensors[node.outputs[0]] = fused
        return
    for name in node.inputs:
        if name and not ctx.has(name):
            node.refuse(f"input {name!r} is not computed before this node (undefined, or the "
                        "graph is not in topological order)")
    present = [n for n in node.inputs if n]
    if node.op_type == "Shape" and present and present[0] in ctx.tensors:
        outputs: list[Any] = [_shape_of_tensor(node, ctx.tensors[present[0]].shape)]
    elif node.op_type in FOLDERS and all(n in ctx.consts for n in present) and \
            (present or node.op_type == "Constant"):
        try:
            outputs = fold(node.op_type, [ctx.consts[n] if n else None for n in node.inputs],
                           node.attrs, node.opset)
        except FoldError as exc:
            node.refuse(str(exc))
    elif node.op_type in OPS:
        try:
            outputs = OPS[node.op_type](ctx, node)
        except OnnxImportError:
            raise
        except (ValueError, TypeError) as exc:   # a layer refusing its arguments or shapes
            node.refuse(" ".join(str(exc).split()))
    else:
        node.refuse(f"operator {node.op_type} is not supported by minicnn's importer")
    for name, value in zip(node.outputs, outputs):
        if not name or value is None:
            continue
        if isinstance(value, numpy.ndarray):
            ctx.consts[name] = value
        else:
            ctx.tensors[name] = value


def import_onnx(path: str | os.PathLike) -> Model:
    """The minicnn graph ``Model`` computing the ONNX file ``path``'s output from its input
    (per-sample shape as the file declares, batch axis free), weights from its initializers,
    in eval mode (BatchNorm uses the imported running statistics until ``model.train()``)."""
    path = Path(path)
    where = str(path)
    onnx = _onnx(where)
    try:
        model = _read_model(onnx, path)
        return _build(onnx, model, where)
    except RecursionError:
        raise OnnxImportError(f"{where}: nested too deeply to read") from None


def _build(onnx: Any, model: Any, where: str) -> Model:
    graph = model.graph
    opset = _opset(model, where)
    if len(graph.node) > MAX_NODES:
        raise OnnxImportError(f"{where}: {len(graph.node):,} nodes is over the budget of "
                              f"{MAX_NODES:,}")
    if len(graph.sparse_initializer):
        raise OnnxImportError(f"{where}: sparse initializers are not read")
    if len(graph.output) != 1:
        raise OnnxImportError(f"{where}: the graph has {len(graph.output)} outputs; a minicnn "
                              "model computes one")
    nodes = []
    for i, proto in enumerate(graph.node):
        label = NodeView(i, proto.name, proto.op_type, [], list(proto.output), {}, opset).label
        if proto.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{where}: {label}: operator domain {proto.domain!r} is not "
                                  "supported (only the default ONNX domain)")
        nodes.append(NodeView(i, proto.name, proto.op_type, list(proto.input),
                              list(proto.output), _attributes(onnx, proto, label, where), opset))
    output_name = graph.output[0].name
    ctx = ImportContext(nodes, {output_name})
    for init in graph.initializer:
        ctx.consts[init.name] = tensor_to_array(onnx, init, where)
    name, shape, ctx.batch = _data_input(graph, set(ctx.consts), where)
    x = Input(shape)
    ctx.tensors[name] = x
    for node in nodes:
        for n in node.inputs:
            ctx.consumers.setdefault(n, []).append(node.index)
    try:
        for node in nodes:                 # first, as a pattern may read a later Constant
            if node.op_type == "Constant" and not node.inputs:
                _run_node(onnx, ctx, node, where)
                ctx.fused[node.index] = None
        for node in nodes:
            _run_node(onnx, ctx, node, where)
    except OnnxImportError as exc:
        raise OnnxImportError(f"{where}: {exc}") from None
    if output_name in ctx.consts:
        raise OnnxImportError(f"{where}: the output {output_name!r} is a constant; it does not "
                              "depend on the input")
    if output_name not in ctx.tensors:
        raise OnnxImportError(f"{where}: no node computes the output {output_name!r}")
    y = ctx.tensors[output_name]
    if y is x:
        y = Identity()(x)
    _check_declared_output(graph.output[0], y.shape, where)
    imported = Model(x, y)
    imported.eval()
    return imported


def _check_declared_output(value: Any, shape: tuple[int, ...], where: str) -> None:
    """A declared static output shape must be what the layers compute (else a mapping is
    wrong, and a silent mismatch would be worse than a refusal)."""
    if value.type.WhichOneof("value") != "tensor_type" or \
            not value.type.tensor_type.HasField("shape"):
        return
    dims = value.type.tensor_type.shape.dim
    declared = [int(d.dim_value) if d.HasField("dim_value") else None for d in dims[1:]]
    if len(dims) and (len(declared) != len(shape) or any(
            d is not None and d != s for d, s in zip(declared, shape))):
        raise OnnxImportError(f"{where}: output {value.name!r} is declared (N, "
                              f"{', '.join('?' if d is None else str(d) for d in declared)}) "
                              f"but the imported layers compute (N, "
                              f"{', '.join(map(str, shape))})")
