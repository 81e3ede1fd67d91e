"""Saving and loading models: the ``.npz`` checkpoint format (no pickle), read within budgets,
and the checks on a model description before anything is built from it."""
from minicnn.saving.checkpoint import (
    Checkpoint,
    CheckpointError,
    LoadedModel,
    load,
    load_checkpoint,
    load_weights,
    save,
)

__all__ = ["CheckpointError", "Checkpoint", "LoadedModel", "save", "load", "load_checkpoint",
           "load_weights"]
