"""Data: the ``DataLoader`` and its transforms, the IDX format, MNIST-style data sets (local
files or bounded downloads) and image files."""
from minicnn.data.loader import (
    DataLoader,
    Normalize,
    RandomShift,
    ToFloat,
    transform_from_config,
)

__all__ = ["DataLoader", "ToFloat", "Normalize", "RandomShift", "transform_from_config"]
