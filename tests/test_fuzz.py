"""Fuzzing: mutated checkpoints and IDX files, and malformed model descriptions, either load or
raise only ``CheckpointError`` / ``DatasetError``, each within a time and memory budget.

The cases are made here from fixed seeds (so CI repeats them) and loaded in one child process
whose address space is capped (``tests/fuzz_child.py``): a case that tried to allocate
gigabytes would end as MemoryError (or kill the child), and fail the test.
"""
from __future__ import annotations

import copy
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn.data.datasets import write_idx
from minicnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.saving import checkpoint
from minicnn.training import SGD

MEMORY_LIMIT_MIB = 1024
"""Address-space cap of the child: Python, NumPy and minicnn need ~150 MiB of it."""
SECONDS_PER_CASE = 1.0
CHILD = Path(__file__).with_name("fuzz_child.py")


def _valid_checkpoint(path: Path) -> Path:
    minicnn.manual_seed(0)
    model = minicnn.Sequential([Conv2D(1, 4, 3), BatchNorm2D(4), ReLU(), MaxPool2D(2),
                                Flatten(), Dense(4 * 3 * 3, 3)], input_shape=(1, 8, 8))
    opt = SGD(model.parameters(), 0.1, momentum=0.9)
    return minicnn.save(model, path, optimizer=opt, epoch=1)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def _with_description(arrays: dict, description: object, path: Path) -> Path:
    text = json.dumps(description) if not isinstance(description, bytes) else description
    raw = text if isinstance(text, bytes) else text.encode()
    arrays = dict(arrays, __minicnn__=np.frombuffer(raw, np.uint8))
    np.savez(path, **arrays)
    return path


def _description(arrays: dict) -> dict:
    return json.loads(arrays["__minicnn__"].tobytes())


def _hostile_descriptions(d: dict) -> dict[str, object]:
    """Named malformed descriptions (the probe's cases and more)."""
    model = d["model"]
    cases: dict[str, object] = {}

    def edit(name: str, fn) -> None:
        e = copy.deepcopy(d)
        fn(e)
        cases[name] = e

    edit("class-network", lambda e: e["model"].update({"class": "Network"}))
    edit("class-abstract-pool", lambda e: e["model"]["config"]["layers"][3].update(
        {"class": "_Pool2D"}))
    edit("config-list", lambda e: e["model"].update({"config": [1, 2]}))
    edit("layers-ints", lambda e: e["model"]["config"].update({"layers": [1, 2, 3]}))
    edit("name-not-string", lambda e: e["model"]["config"]["layers"][0].update({"name": 7}))
    edit("version-string", lambda e: e.update({"version": "2"}))
    edit("version-future", lambda e: e.update({"version": 99}))
    edit("meta-list", lambda e: e.update({"meta": [1]}))
    edit("optimizer-buffers-huge", lambda e: e["optimizer"].update(
        {"buffers": {"velocity": 10**12}}))
    edit("optimizer-buffers-list", lambda e: e["optimizer"].update({"buffers": [3]}))
    edit("optimizer-old-velocity-huge", lambda e: (e["optimizer"].pop("buffers"),
                                                   e["optimizer"].update({"velocity": 10**12})))
    edit("dense-30000", lambda e: e["model"]["config"]["layers"][5]["config"].update(
        {"in_features": 30000, "out_features": 30000}))
    edit("dense-30000-unchecked-shapes", lambda e: (
        e["model"]["config"].update({"input_shape": None}),
        e["model"]["config"]["layers"][5]["config"].update(
            {"in_features": 30000, "out_features": 30000})))
    edit("conv-out-1e9", lambda e: e["model"]["config"]["layers"][0]["config"].update(
        {"out_channels": 10**9}))
    edit("conv-out-float", lambda e: e["model"]["config"]["layers"][0]["config"].update(
        {"out_channels": 1e9}))
    edit("input-shape-huge", lambda e: e["model"]["config"].update(
        {"input_shape": [1, 10**9, 10**9]}))
    edit("many-layers", lambda e: e["model"]["config"].update(
        {"layers": [{"class": "ReLU", "name": "", "config": {}}] * 100_000}))
    opening = '{"class": "Sequential", "name": "", "config": {"input_shape": null, "layers": ['
    deep = opening * 3000 + '{"class": "ReLU", "name": "", "config": {}}' + "]}}" * 3000
    text = json.dumps(dict(d, model="DEEP")).replace('"DEEP"', deep)
    cases["nested-3000"] = text.encode()                 # too deep for json.dumps to write
    deep = opening * 200 + '{"class": "ReLU", "name": "", "config": {}}' + "]}}" * 200
    cases["nested-200"] = json.dumps(dict(d, model="DEEP")).replace('"DEEP"', deep).encode()
    graph = {"class": "Model", "name": "", "config": {"input_shape": [1, 8, 8], "nodes": [
        {"class": "ReLU", "name": "", "config": {}, "inputs": [5]}]}}
    edit("graph-bad-index", lambda e: e.update({"model": graph}))
    edit("unknown-kwarg", lambda e: e["model"]["config"]["layers"][2]["config"].update(
        {"bogus": 1}))
    cases["json-deep"] = ("[" * 100_000 + "]" * 100_000).encode()
    cases["not-json"] = b"\xff\xfe{"
    cases["json-list"] = [model]
    return cases


def _npz_with(path: Path, members: dict[str, bytes], compress: bool = True) -> Path:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _make_cases(folder: Path) -> dict[str, str]:
    """Write every case into ``folder``; return {file name: what it must end as}."""
    rng = np.random.default_rng(20261125)
    expect: dict[str, str] = {}
    good = _valid_checkpoint(folder / "valid.npz")
    expect[good.name] = "loaded"
    raw = good.read_bytes()
    for i in range(60):                                      # bit flips
        data = bytearray(raw)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        (folder / f"flip{i:02d}.npz").write_bytes(bytes(data))
        expect[f"flip{i:02d}.npz"] = "any"
    for i, cut in enumerate(rng.integers(0, len(raw), size=20)):      # truncations
        (folder / f"cut{i:02d}.npz").write_bytes(raw[:int(cut)])
        expect[f"cut{i:02d}.npz"] = "CheckpointError"
    arrays = _arrays(good)
    description = _description(arrays)
    for name, hostile in _hostile_descriptions(description).items():
        _with_description({k: v for k, v in arrays.items() if k != "__minicnn__"}, hostile,
                          folder / f"desc-{name}.npz")
        expect[f"desc-{name}.npz"] = "CheckpointError"
    keys = [k for k in arrays if k.startswith("param/")]
    for label, value in (("nan", np.nan), ("inf", np.inf)):
        bad = dict(arrays)
        bad[keys[0]] = bad[keys[0]].copy()
        bad[keys[0]].flat[0] = value
        np.savez(folder / f"weights-{label}.npz", **bad)
        expect[f"weights-{label}.npz"] = "CheckpointError"
    for dtype in ("int64", "complex64", "datetime64[s]"):
        bad = dict(arrays)
        bad[keys[0]] = np.zeros(arrays[keys[0]].shape, dtype=dtype)
        np.savez(folder / f"weights-{dtype[:8]}.npz", **bad)
        expect[f"weights-{dtype[:8]}.npz"] = "CheckpointError"
    structured = dict(arrays)
    structured[keys[0]] = np.zeros(3, dtype=[("a", "f4"), ("b", "f4")])
    np.savez(folder / "weights-structured.npz", **structured)
    expect["weights-structured.npz"] = "CheckpointError"
    # a .npy header that claims 8 TB, in a tiny archive
    claim = _npy_bytes(np.zeros(4, np.float32)).replace(b"(4,)", b"(2000000000000,)")
    _npz_with(folder / "npy-8tb.npz", {"param/x.npy": claim})
    expect["npy-8tb.npz"] = "CheckpointError"
    # a zip bomb: 3 GiB of zeros declared by one member (written stored-size small, deflated)
    bomb = folder / "zip-bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("param/x.npy", "w", force_zip64=True) as member:
            header = _npy_bytes(np.zeros(1, np.float32))
            member.write(header[:-4].replace(b"(1,)", b"(671088640,)"))
            zeros = bytes(16 << 20)
            for _ in range(160):                         # 2.5 GiB of zeros, a few MB zipped
                member.write(zeros)
    expect[bomb.name] = "CheckpointError"
    _npz_with(folder / "pickle.npz", {"param/x.npy": _npy_bytes(np.array([{}], dtype=object))})
    expect["pickle.npz"] = "CheckpointError"
    (folder / "text.npz").write_text("hello, I am not a checkpoint\n")
    expect["text.npz"] = "CheckpointError"
    # IDX files: valid, mutated, truncated, header overflow, gzip bombs
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    for suffix in (".idx", ".idx.gz"):
        path = folder / f"good{suffix}"
        write_idx(path, images, compress=suffix.endswith(".gz"))
        expect[path.name] = "loaded"
        payload = path.read_bytes()
        for i in range(25):
            data = bytearray(payload)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                data[pos] ^= 1 << int(rng.integers(0, 8))
            name = f"idxflip{i:02d}{suffix}"
            (folder / name).write_bytes(bytes(data))
            expect[name] = "any-dataset"
        for i, cut in enumerate(rng.integers(0, len(payload), size=10)):
            name = f"idxcut{i:02d}{suffix}"
            (folder / name).write_bytes(payload[:int(cut)])
            expect[name] = "DatasetError"
    overflow = bytes([0, 0, 8, 3]) + np.array([2**32 - 1] * 3, ">u4").tobytes()
    (folder / "idx-overflow.idx").write_bytes(overflow + b"\0" * 64)
    expect["idx-overflow.idx"] = "DatasetError"
    header = bytes([0, 0, 8, 1]) + np.array([16], ">u4").tobytes()
    bomb_gz = zlib.compressobj(1, zlib.DEFLATED, 31)     # gzip, 1 GiB of zeros after 16 bytes
    parts = [bomb_gz.compress(header + bytes(16))]
    zeros = bytes(16 << 20)
    parts += [bomb_gz.compress(zeros) for _ in range(64)]
    (folder / "idx-gzip-bomb.idx.gz").write_bytes(b"".join(parts) + bomb_gz.flush())
    expect["idx-gzip-bomb.idx.gz"] = "DatasetError"
    big_header = bytes([0, 0, 8, 1]) + np.array([2**31], ">u4").tobytes()
    (folder / "idx-gzip-claims-2g.idx.gz").write_bytes(
        gzip.compress(big_header + bytes(1 << 20), compresslevel=1))
    expect["idx-gzip-claims-2g.idx.gz"] = "DatasetError"
    return expect


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    expect = _make_cases(folder)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(CHILD), str(folder), str(MEMORY_LIMIT_MIB)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = {r["case"]: r for r in map(json.loads, run.stdout.splitlines())}
    return expect, seen


@pytest.mark.slow
def test_every_case_ran(results):
    expect, seen = results
    assert set(seen) == set(expect)
    assert len(seen) > 150


def test_every_case_loads_or_raises_the_loaders_one_error(results):
    expect, seen = results
    allowed = {"any": {"loaded", "CheckpointError"}, "any-dataset": {"loaded", "DatasetError"}}
    wrong = {name: seen[name]["outcome"] for name, want in expect.items()
             if seen[name]["outcome"] not in allowed.get(want, {want})}
    assert wrong == {}


def test_every_case_is_quick(results):
    _, seen = results
    slow = {name: round(r["seconds"], 2) for name, r in seen.items()
            if r["seconds"] > SECONDS_PER_CASE}
    assert slow == {}


def test_the_hostile_description_cases_name_the_problem(tmp_path):
    arrays = _arrays(_valid_checkpoint(tmp_path / "v.npz"))
    description = _description(arrays)
    plain = {k: v for k, v in arrays.items() if k != "__minicnn__"}
    for name, needle in (("many-layers", "more than 10,000 layers"),
                         ("nested-200", "nested more than 32 deep"),
                         ("graph-bad-index", "'inputs' must list indices"),
                         ("class-abstract-pool", "unknown layer class '_Pool2D'"),
                         ("dense-30000", "dense_1 does not fit input shape"),
                         ("dense-30000-unchecked-shapes",
                          "does not match the model's architecture: dense_1.weight has shape")):
        path = _with_description(plain, _hostile_descriptions(description)[name],
                                 tmp_path / f"{name}.npz")
        with pytest.raises(checkpoint.CheckpointError, match=needle):
            minicnn.load(path)
