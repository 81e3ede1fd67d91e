"""Bytes that a training forward keeps for backward: the reference CNN at batch 128.

    python examples/saved_memory.py [--batch-size 128]

Runs one forward with gradients recorded (training mode, one replica, so everything is in the
model's own layers) and adds up the arrays each layer's ``save_for_backward`` kept, counting a
buffer shared by several layers (or a view of one) once. Prints each layer's share and the total.
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import minicnn
from minicnn.zoo import build_model


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, list | tuple):
        return [a for v in value for a in _arrays(v)]
    return []


def _buffer(a: np.ndarray) -> tuple[int, int]:
    """(address, bytes) of the memory block an array (or the array it views) owns."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.__array_interface__["data"][0], a.nbytes


def saved_bytes(batch_size: int = 128) -> tuple[int, list[tuple[str, int]]]:
    """(total bytes kept for backward, [(layer, bytes first kept by it)])."""
    minicnn.manual_seed(0)
    model = build_model("ref-cnn")
    model.workers = 1
    x = np.random.default_rng(0).standard_normal((batch_size, 1, 28, 28)).astype(np.float32)
    model.forward(x, training=True)
    seen: set[int] = set()
    rows = []
    for name, layer in model.named_layers():
        kept = 0
        for a in _arrays(layer.__dict__.get("_saved")):
            address, size = _buffer(a)
            if address not in seen:
                seen.add(address)
                kept += size
        if name:
            rows.append((name, kept))
    return sum(k for _, k in rows), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    total, rows = saved_bytes(args.batch_size)
    for name, kept in rows:
        print(f"{name:<12} {kept / 2**20:8.2f} MiB")
    print(f"{'total':<12} {total / 2**20:8.2f} MiB ({total:,} bytes) kept for backward at batch "
          f"{args.batch_size}")


if __name__ == "__main__":
    main()
