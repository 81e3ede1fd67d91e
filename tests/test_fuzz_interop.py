"""Fuzzing the interop readers: hostile ONNX files either import or raise ``OnnxImportError``,
hostile safetensors files either load or raise ``SafetensorsError``, each within a time and
memory budget.

As in tests/test_fuzz.py, the cases are made here from fixed seeds and read in one child
process whose address space is capped: a case that tried to allocate gigabytes (a 2 GB
declared tensor, a header claiming terabytes) would end as MemoryError and fail the test.
Cases: bit flips and truncations of a valid file of each format, ONNX tensors declaring 2 GB
or more than they hold, external-data references (to a file beside the model and outside
it), a constant-folding bomb, a node reading its own output, graphs over the node budget,
subgraphs nested 200 deep; safetensors headers claiming 1 TB, tensors claiming terabytes,
overlapping and gapped offsets, bad dtypes and shapes, JSON nested 100,000 deep.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.flatten import Flatten
from minicnn.layers.normalization import BatchNorm2D
from minicnn.layers.pooling import MaxPool2D
from minicnn.onnx.importer import MAX_NODES
from minicnn.saving.safetensors import save_weights, write_safetensors

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MEMORY_LIMIT_MIB = 1536
"""Address-space cap of the child: Python, NumPy, onnx and minicnn need ~400 MiB of it."""
SECONDS_PER_CASE = 2.0

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
cases, limit_mib = Path(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))
import minicnn
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.flatten import Flatten
from minicnn.layers.normalization import BatchNorm2D
from minicnn.layers.pooling import MaxPool2D
from minicnn.onnx.importer import import_onnx
from minicnn.saving.safetensors import load_weights
import onnx  # imported by the first import_onnx otherwise, counted in its case's time
for path in sorted(cases.glob("*.*")):
    if path.suffix not in (".onnx", ".safetensors"):
        continue
    start = time.perf_counter()
    try:
        if path.suffix == ".onnx":
            import_onnx(path)
        else:
            model = minicnn.Sequential([Conv2D(1, 4, 3), BatchNorm2D(4), MaxPool2D(2),
                                        Flatten(), Dense(36, 3)], input_shape=(1, 8, 8))
            load_weights(model, path)
        outcome, message = "loaded", ""
    except Exception as exc:
        outcome, message = type(exc).__name__, str(exc)
    print(json.dumps({"case": path.name, "outcome": outcome, "message": message,
                      "seconds": time.perf_counter() - start}), flush=True)
'''


def small_cnn() -> minicnn.Sequential:
    minicnn.manual_seed(0)
    return minicnn.Sequential([Conv2D(1, 4, 3), BatchNorm2D(4), MaxPool2D(2), Flatten(),
                               Dense(36, 3)], input_shape=(1, 8, 8))


def _model(nodes, inits=(), x_shape=("N", 4), y_shape=("N", 4), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(x_shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, list(y_shape))], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _claiming(name: str, dims: list[int], raw: bytes = bytes(16)) -> TensorProto:
    """A float tensor declaring ``dims`` that holds ``raw``."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.raw_data = raw
    return tensor


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_if(depth: int) -> bytes:
    """A ModelProto whose graph holds an If whose then-branch holds an If ... ``depth`` deep,
    written as protobuf bytes by hand (protobuf's own copy refuses to build it past 100)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
                              ).SerializeToString()
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + \
            _varint(onnx.AttributeProto.GRAPH)
        node = _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attribute)
        graph = _field(1, node)
    graph += _field(11, helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
                    .SerializeToString())
    graph += _field(12, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
                    .SerializeToString())
    opset = _field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, opset)


def _onnx_cases(folder: Path, rng, expect: dict[str, str]) -> None:
    from minicnn.onnx.export import export_onnx
    good = export_onnx(small_cnn(), folder / "valid.onnx")
    expect[good.name] = "loaded"
    raw = good.read_bytes()
    for i in range(60):                                        # bit flips
        data = bytearray(raw)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        (folder / f"flip{i:02d}.onnx").write_bytes(bytes(data))
        expect[f"flip{i:02d}.onnx"] = "any-onnx"
    for i, cut in enumerate(rng.integers(1, len(raw) - 1, size=20)):    # truncations
        (folder / f"cut{i:02d}.onnx").write_bytes(raw[:int(cut)])
        expect[f"cut{i:02d}.onnx"] = "OnnxImportError"
    relu = [helper.make_node("Gemm", ["x", "w"], ["y"])]
    hostile = {
        "tensor-2gb": _model(relu, [_claiming("w", [4, 1 << 27])]),         # 2 GiB declared
        "tensor-holds-less": _model(relu, [_claiming("w", [4, 1 << 20])]),   # 16 MiB declared
        "tensor-negative-dims": _model(relu, [_claiming("w", [4, -4])]),
        "fold-bomb": _model([
            helper.make_node("ConstantOfShape", ["s"], ["big"]),
            helper.make_node("Relu", ["x"], ["y"])],
            [numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "s")]),
        "self-loop": _model([helper.make_node("Add", ["x", "y"], ["y"])]),
        "over-node-budget": _model([helper.make_node("Relu", [f"v{i}" if i else "x"],
                                                     [f"v{i + 1}" if i < MAX_NODES else "y"])
                                    for i in range(MAX_NODES + 1)]),
        "two-outputs-no-opset": helper.make_model(helper.make_graph([], "e", [], [])),
        "symbolic-dims": _model([helper.make_node("Relu", ["x"], ["y"])], x_shape=("N", "C")),
        "huge-declared-input": _model([helper.make_node("Relu", ["x"], ["y"])],
                                      x_shape=("N", 1 << 40), y_shape=("N", 1 << 40)),
    }
    (folder / "nested-if-200.onnx").write_bytes(_nested_if(200))
    (folder / "nested-if-20.onnx").write_bytes(_nested_if(20))
    expect["nested-if-200.onnx"] = expect["nested-if-20.onnx"] = "OnnxImportError"
    for name, model in hostile.items():
        (folder / f"{name}.onnx").write_bytes(model.SerializeToString())
        expect[f"{name}.onnx"] = "loaded" if name == "huge-declared-input" else "OnnxImportError"
    for where in ("weights.bin", "../outside.bin", "/etc/passwd"):
        tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4],
                             data_location=TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value=where)
        tensor.external_data.add(key="length", value="64")
        name = "external-" + where.strip("./").replace("/", "-")
        (folder / f"{name}.onnx").write_bytes(_model(relu, [tensor]).SerializeToString())
        expect[f"{name}.onnx"] = "OnnxImportError"
    (folder / "weights.bin").write_bytes(bytes(64))
    (folder / "text.onnx").write_text("hello, I am not a model\n")
    expect["text.onnx"] = "OnnxImportError"


def _safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _safetensors_cases(folder: Path, rng, expect: dict[str, str]) -> None:
    good = save_weights(small_cnn(), folder / "valid.safetensors")
    expect[good.name] = "loaded"
    raw = good.read_bytes()
    for i in range(40):
        data = bytearray(raw)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        (folder / f"stflip{i:02d}.safetensors").write_bytes(bytes(data))
        expect[f"stflip{i:02d}.safetensors"] = "any-safetensors"
    for i, cut in enumerate(rng.integers(0, len(raw) - 1, size=20)):
        (folder / f"stcut{i:02d}.safetensors").write_bytes(raw[:int(cut)])
        expect[f"stcut{i:02d}.safetensors"] = "SafetensorsError"
    f32 = {"dtype": "F32"}
    hostile = {
        "header-1tb": _safetensors(b"{}", length=1 << 40),
        "header-past-end": _safetensors(b"{}" + b" " * 6, length=4096),
        "tensor-claims-4tb": _safetensors({"w": dict(f32, shape=[1 << 40],
                                                     data_offsets=[0, 4 << 40])}, bytes(16)),
        "overlap": _safetensors({"a": dict(f32, shape=[2], data_offsets=[0, 8]),
                                 "b": dict(f32, shape=[2], data_offsets=[4, 12])}, bytes(12)),
        "gap": _safetensors({"a": dict(f32, shape=[2], data_offsets=[0, 8]),
                             "b": dict(f32, shape=[2], data_offsets=[12, 20])}, bytes(20)),
        "size-mismatch": _safetensors({"a": dict(f32, shape=[3], data_offsets=[0, 8])},
                                      bytes(8)),
        "negative-shape": _safetensors({"a": dict(f32, shape=[-2], data_offsets=[0, 8])},
                                       bytes(8)),
        "float-offsets": _safetensors({"a": dict(f32, shape=[2], data_offsets=[0.0, 8.0])},
                                      bytes(8)),
        "dtype-unknown": _safetensors({"a": {"dtype": "C64", "shape": [1],
                                             "data_offsets": [0, 8]}}, bytes(8)),
        "not-utf8": _safetensors(b"\xff\xfe{}  ", b""),
        "json-list": _safetensors(b"[1, 2, 3]", b""),
        "json-nested-100000": _safetensors(b"[" * 100_000 + b"]" * 100_000, b""),
        "metadata-not-strings": _safetensors({"__metadata__": {"a": 1}}, b""),
    }
    weights = dict(small_cnn().named_parameters())
    ints = {k: p.data.astype(np.int32) for k, p in weights.items()}
    write_safetensors(folder / "ints-for-floats.safetensors", ints, {"format": "minicnn"})
    expect["ints-for-floats.safetensors"] = "SafetensorsError"
    for name, data in hostile.items():
        (folder / f"{name}.safetensors").write_bytes(data)
        expect[f"{name}.safetensors"] = "SafetensorsError"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_interop")
    rng = np.random.default_rng(20261202)
    expect: dict[str, str] = {}
    _onnx_cases(folder, rng, expect)
    _safetensors_cases(folder, rng, expect)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(MEMORY_LIMIT_MIB)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = {r["case"]: r for r in map(json.loads, run.stdout.splitlines())}
    print(f"{len(seen)} interop fuzz cases in {time.perf_counter() - start:.1f} s")
    return expect, seen


def test_every_case_ran(results):
    expect, seen = results
    assert set(seen) == set(expect)
    assert len(seen) > 150


def test_every_case_imports_or_raises_the_readers_one_error(results):
    expect, seen = results
    allowed = {"any-onnx": {"loaded", "OnnxImportError"},
               "any-safetensors": {"loaded", "SafetensorsError"}}
    wrong = {name: (seen[name]["outcome"], seen[name]["message"][:200])
             for name, want in expect.items()
             if seen[name]["outcome"] not in allowed.get(want, {want})}
    assert wrong == {}


def test_every_error_is_one_line_naming_the_file(results):
    _, seen = results
    bad = {name: r["message"] for name, r in seen.items() if r["outcome"] != "loaded" and
           ("\n" in r["message"] or name not in r["message"])}
    assert bad == {}


def test_every_case_is_quick(results):
    _, seen = results
    slow = {name: round(r["seconds"], 2) for name, r in seen.items()
            if r["seconds"] > SECONDS_PER_CASE}
    assert slow == {}


@pytest.mark.parametrize("case,needle", [
    ("tensor-2gb.onnx", "over the budget"), ("tensor-holds-less.onnx", "holds 16 bytes"),
    ("fold-bomb.onnx", "over the budget"), ("self-loop.onnx", "not computed before"),
    ("over-node-budget.onnx", "over the budget of 10,000"),
    ("external-weights.bin.onnx", "external file 'weights.bin'"),
    ("nested-if-200.onnx", "not a readable ONNX model"), ("nested-if-20.onnx", "subgraph"),
    ("header-1tb.safetensors", "over the budget"), ("overlap.safetensors", "overlapping"),
    ("tensor-claims-4tb.safetensors", "the tensors hold 4,398,046,511,104 bytes"),
    ("gap.safetensors", "a gap"), ("json-nested-100000.safetensors", "not JSON"),
])
def test_the_hostile_cases_name_the_problem(results, case, needle):
    _, seen = results
    assert needle in seen[case]["message"], seen[case]["message"]
