"""Benchmark minicnn's reference CNN: training and inference speed, per-layer times, memory.

    python examples/benchmark.py                          # NumPy backend
    python examples/benchmark.py --compare torch          # against the same model in PyTorch
    python examples/benchmark.py --backends numpy,cupy    # CPU and GPU, with the GPU speedup
    python examples/benchmark.py --width-mult 2 --json bench.json

Same options as ``minicnn bench``; see ``minicnn/tools/bench/`` for what each figure measures.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # checkout
from minicnn.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
