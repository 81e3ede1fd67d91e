"""Data: the ``DataLoader`` and its transforms, the IDX format, MNIST-style data sets (local
files or bounded downloads) and image files.

    from minicnn.data import DataLoader, Normalize, RandomShift, load_mnist
"""
from minicnn.data.augment import (
    Compose,
    Cutout,
    RandomAffine,
    RandomCrop,
    RandomHorizontalFlip,
    augmentation_from_config,
    parse_augmentation,
)
from minicnn.data.datasets import (
    data_root,
    dataset_files,
    load_fashion_mnist,
    load_mnist,
)
from minicnn.data.errors import DatasetError
from minicnn.data.idx import read_idx, write_idx
from minicnn.data.images import fit_to_input, read_image
from minicnn.data.loader import DataLoader
from minicnn.data.transforms import (
    Normalize,
    RandomShift,
    ToFloat,
    model_transform,
    raw_input_transform,
    transform_from_config,
)

__all__ = ["DataLoader", "ToFloat", "Normalize", "RandomShift", "transform_from_config",
           "load_mnist", "load_fashion_mnist", "data_root", "dataset_files", "DatasetError",
           "read_idx", "write_idx", "read_image", "fit_to_input", "model_transform",
           "raw_input_transform", "RandomCrop", "RandomHorizontalFlip", "RandomAffine", "Cutout",
           "Compose", "augmentation_from_config", "parse_augmentation"]
