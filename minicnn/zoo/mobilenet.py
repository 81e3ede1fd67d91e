"""A small MobileNet (Howard et al., v1): depthwise-separable blocks, for 28x28 and 32x32.

    stem:  Conv 3x3 (in -> w0), BatchNorm, ReLU6
    block: depthwise Conv 3x3 (groups = channels, stride s), BN, ReLU6,
           pointwise Conv 1x1 (c -> c'), BN, ReLU6
    head:  GlobalAvgPool2D, Dense(classes)

A depthwise 3x3 costs 9 multiplies per output instead of 9 * C: the whole block is about
1/C' + 1/9 of a full 3x3 convolution's work.
"""
from __future__ import annotations

from collections.abc import Sequence

from minicnn.layers import BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, Layer
from minicnn.layers.activations import get_activation
from minicnn.models import Sequential

__all__ = ["mobilenet", "separable_block", "DEFAULT_BLOCKS"]

DEFAULT_BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
"""(output channels, stride) of each depthwise-separable block after a 32-channel stem."""


def _relu6() -> Layer:
    layer = get_activation("relu6")
    assert layer is not None
    return layer


def separable_block(c_in: int, c_out: int, stride: int = 1) -> list[Layer]:
    """Depthwise 3x3 (stride) + BN + ReLU6, pointwise 1x1 + BN + ReLU6: (c_in, H, W) ->
    (c_out, H/stride, W/stride)."""
    return [Conv2D(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            BatchNorm2D(c_in), _relu6(),
            Conv2D(c_in, c_out, 1, bias=False), BatchNorm2D(c_out), _relu6()]


def mobilenet(blocks: Sequence[tuple[int, int]] = DEFAULT_BLOCKS, stem: int = 32,
              in_channels: int = 1, input_size: int = 28, classes: int = 10) -> Sequential:
    """MobileNet-v1-style Sequential for (in_channels, input_size, input_size) images."""
    layers: list[Layer] = [Conv2D(in_channels, stem, 3, padding=1, bias=False),
                           BatchNorm2D(stem), _relu6()]
    c = stem
    for c_out, stride in blocks:
        layers += separable_block(c, int(c_out), int(stride))
        c = int(c_out)
    layers += [GlobalAvgPool2D(), Dense(c, classes)]
    return Sequential(layers, input_shape=(in_channels, input_size, input_size))
