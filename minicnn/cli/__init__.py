"""The ``minicnn`` command: train, evaluate, predict, summary, export, visualize, bench."""
from minicnn.cli.commands import main

__all__ = ["main"]
