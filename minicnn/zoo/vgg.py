"""A small VGG (Simonyan and Zisserman) with BatchNorm, for 28x28 and 32x32 images.

Each stage is ``convs`` x (Conv 3x3 same, BatchNorm, ReLU) then MaxPool 2x2; the head is
Flatten, Dense(512) + ReLU, Dropout, Dense(classes). The default (widths 32, 64, 128; two
convs per stage) maps 28x28 to 128x3x3.
"""
from __future__ import annotations

from collections.abc import Sequence

from minicnn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU
from minicnn.models import Sequential

__all__ = ["vgg"]


def vgg(widths: Sequence[int] = (32, 64, 128), convs: int = 2, in_channels: int = 1,
        input_size: int = 28, classes: int = 10, dropout: float = 0.3) -> Sequential:
    """VGG-style Sequential for (in_channels, input_size, input_size) images; logits."""
    if not widths or min(widths) < 1 or convs < 1:
        raise ValueError(f"vgg: expected widths >= 1 and convs >= 1, got widths={widths}, "
                         f"convs={convs}")
    layers: list[Layer] = []
    c, size = in_channels, input_size
    for width in widths:
        for _ in range(convs):
            layers += [Conv2D(c, width, 3, padding=1, bias=False), BatchNorm2D(width), ReLU()]
            c = width
        layers.append(MaxPool2D(2))
        size //= 2
    if size < 1:
        raise ValueError(f"vgg: {len(widths)} stages halve {input_size}x{input_size} to nothing")
    layers += [Flatten(), Dense(c * size * size, 512, activation="relu"), Dropout(dropout),
               Dense(512, classes)]
    return Sequential(layers, input_shape=(in_channels, input_size, input_size))
