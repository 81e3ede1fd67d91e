"""Small CNNs for 1x28x28 images and 10 classes: the reference CNN and LeNet-5."""
from __future__ import annotations

from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential

__all__ = ["ref_cnn", "lenet5"]


def ref_cnn(width_mult: int = 1) -> Sequential:
    """The reference CNN: two 3x3 conv + ReLU + 2x2 max-pool stages (32K and 64K channels, K =
    ``width_mult``), then Dense 64K*7*7 -> 128 (ReLU) -> 10. About 420k parameters at K = 1."""
    c1, c2 = 32 * width_mult, 64 * width_mult
    return Sequential([
        Conv2D(1, c1, 3, padding=1), ReLU(), MaxPool2D(2),      # (32K, 14, 14)
        Conv2D(c1, c2, 3, padding=1), ReLU(), MaxPool2D(2),     # (64K, 7, 7)
        Flatten(),
        Dense(c2 * 7 * 7, 128, activation="relu"),
        Dense(128, 10),
    ], input_shape=(1, 28, 28))


def lenet5() -> Sequential:
    """LeNet-5 in its modern form: 5x5 convs with 6 and 16 channels, ReLU and max-pooling,
    then Dense 400 -> 120 -> 84 -> 10. About 62k parameters."""
    return Sequential([
        Conv2D(1, 6, 5, padding=2), ReLU(), MaxPool2D(2),       # (6, 14, 14)
        Conv2D(6, 16, 5), ReLU(), MaxPool2D(2),                 # (16, 5, 5)
        Flatten(),
        Dense(16 * 5 * 5, 120, activation="relu"),
        Dense(120, 84, activation="relu"),
        Dense(84, 10),
    ], input_shape=(1, 28, 28))
