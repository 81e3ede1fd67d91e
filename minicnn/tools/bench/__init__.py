"""``minicnn bench``: minicnn's training and inference speed against PyTorch's."""
from minicnn.tools.bench.command import main

__all__ = ["main"]
