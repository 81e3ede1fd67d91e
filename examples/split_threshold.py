"""When does splitting a batch among threads pay? A training step whole against split, by work.

    python examples/split_threshold.py

A model splits a NumPy batch among replicas in threads only when each replica gets at least
``parallel.MIN_SLICE_WORK`` operations (``parallel.work_per_sample`` times its samples). This
times fit's step (forward, loss, backward) of small models at batch sizes around that line, on
one thread (``workers=1``) and split in two (``workers=2``, the threshold lifted), alternating
in blocks on the same model and batch, and prints each case's work per replica, the two median
steps and split / whole: below 1, splitting pays.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
import numpy as np
from minicnn.losses import SoftmaxCrossEntropy

import minicnn
from minicnn import zoo
from minicnn.kernels import allocator
from minicnn.layers import BatchNorm1D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.training import parallel


def _models():
    """(name, model factory, per-sample input shape, largest batch timed)."""
    return [
        ("relu(512)", lambda: Sequential([ReLU(), Flatten(), Dense(512, 10)]), (512,), 8192),
        ("batchnorm1d(512)", lambda: Sequential([BatchNorm1D(512), Dense(512, 10)]), (512,),
         8192),
        ("mlp 784-256-10", lambda: Sequential([Dense(784, 256, activation="relu"),
                                               Dense(256, 10)]), (784,), 8192),
        ("conv8 + pool", lambda: Sequential([Conv2D(1, 8, 3, padding=1), ReLU(), MaxPool2D(2),
                                             Flatten(), Dense(8 * 14 * 14, 10)]),
         (1, 28, 28), 2048),
        ("ref-cnn", lambda: zoo.build_model("ref-cnn"), (1, 28, 28), 512),
    ]


def time_case(model, x, labels, blocks: int, steps: int, pause: float) -> dict[str, float]:
    """Median seconds of a training step with ``workers`` 1 and 2, alternating in blocks."""
    loss = SoftmaxCrossEntropy()
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(blocks):
        for workers, block in times.items():
            model.workers = workers
            time.sleep(pause)
            for k in range(steps + 1):                 # one untimed step per block
                start = time.perf_counter()
                out = model.forward(x, training=True, check=False)
                loss.forward(out, labels)
                model.backward(loss.backward())
                if k:
                    block.append(time.perf_counter() - start)
    return {f"workers={w}": statistics.median(t) for w, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,128,512,2048,8192",
                        help="comma-separated batch sizes")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per setting")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--pause", type=float, default=0.05)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()                  # as the minicnn command does
    threshold, parallel.MIN_SLICE_WORK = parallel.MIN_SLICE_WORK, 0      # let workers=2 split
    rng = np.random.default_rng(0)
    print(f"MIN_SLICE_WORK = {threshold:,} operations per replica")
    print("| model | batch | work per replica | whole ms | split ms | split / whole |")
    print("| --- | --- | --- | --- | --- | --- |")
    try:
        for name, make, shape, largest in _models():
            for batch in (int(b) for b in args.batches.split(",")):
                if batch > largest:
                    continue
                minicnn.manual_seed(0)
                model = make()
                x = rng.standard_normal((batch,) + shape, dtype=np.float32)
                labels = rng.integers(0, 10, batch)
                work = parallel.work_per_sample(model, shape) * (batch // 2)
                t = time_case(model, x, labels, args.blocks, args.steps, args.pause)
                whole, split = t["workers=1"], t["workers=2"]
                print(f"| {name} | {batch} | {work:,} | {whole * 1e3:.3g} | {split * 1e3:.3g} "
                      f"| {split / whole:.2f} |", flush=True)
    finally:
        parallel.MIN_SLICE_WORK = threshold


if __name__ == "__main__":
    main()
