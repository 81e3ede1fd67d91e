"""A small ResNet (He et al.) for 28x28 and 32x32 images: basic blocks, as a graph ``Model``.

    stem:   Conv 3x3 (in -> w0), BatchNorm, ReLU
    stage k (k = 0, 1, 2, ...; widths w_k, ``blocks`` basic blocks each, stride 2 from stage 1):
        y = ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(x))))) + shortcut(x))
        shortcut = x, or Conv 1x1 stride 2 + BN where the shape changes
    head:   GlobalAvgPool2D, Dense(w_last -> classes)

The default (widths 16, 32, 64; 2 blocks per stage) is a ResNet-14: 28x28 -> 28, 14, 7. Convs
before a BatchNorm have no bias (the BN's shift replaces it).
"""
from __future__ import annotations

from collections.abc import Sequence

from minicnn.core.symbolic import Input, SymbolicTensor
from minicnn.layers import Add, BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, ReLU
from minicnn.models import Model

__all__ = ["resnet", "basic_block"]


def _conv_bn(x: SymbolicTensor, c_in: int, c_out: int, k: int, stride: int) -> SymbolicTensor:
    x = Conv2D(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)(x)
    return BatchNorm2D(c_out)(x)


def basic_block(x: SymbolicTensor, c_in: int, c_out: int, stride: int = 1) -> SymbolicTensor:
    """ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)): (c_in, H, W) -> (c_out, H/s, W/s)."""
    y = ReLU()(_conv_bn(x, c_in, c_out, 3, stride))
    y = _conv_bn(y, c_out, c_out, 3, 1)
    shortcut = x if stride == 1 and c_in == c_out else _conv_bn(x, c_in, c_out, 1, stride)
    return ReLU()(Add()(y, shortcut))


def resnet(widths: Sequence[int] = (16, 32, 64), blocks: int = 2, in_channels: int = 1,
           input_size: int = 28, classes: int = 10) -> Model:
    """A basic-block ResNet for (in_channels, input_size, input_size) images: one stage per
    width, ``blocks`` blocks each; logits (N, classes)."""
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1 or blocks < 1:
        raise ValueError(f"resnet: expected widths >= 1 and blocks >= 1, got widths={widths}, "
                         f"blocks={blocks}")
    inputs = Input((in_channels, input_size, input_size))
    x = ReLU()(_conv_bn(inputs, in_channels, widths[0], 3, 1))
    c = widths[0]
    for stage, width in enumerate(widths):
        for b in range(blocks):
            x = basic_block(x, c, width, stride=2 if stage > 0 and b == 0 else 1)
            c = width
    x = GlobalAvgPool2D()(x)
    return Model(inputs, Dense(c, classes)(x))
