"""The layers ``minicnn bench --layers`` times against PyTorch, at realistic sizes.

Each ``LayerCase`` names a minicnn layer (module, class and arguments, imported when the case
runs) and the PyTorch function computing the same thing: ``torch_fn(F, x, p)`` with ``F`` as
``torch.nn.functional``, ``x`` the input tensor and ``p`` the layer's parameters by minicnn name
(``named_parameters``), as torch tensors holding minicnn's values in minicnn's layout (every
layer here keeps PyTorch's layout). ``target`` is the largest minicnn/PyTorch time ratio the
project accepts for the case (1.5, and 1.0 for depthwise convolution).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TorchFn = Callable[[Any, Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class LayerCase:
    """One timed layer: ``cls(*args, **kwargs)`` from ``module`` on float32 input ``shape``."""

    name: str
    module: str
    cls: str
    args: tuple[Any, ...]
    shape: tuple[int, ...]
    torch_fn: TorchFn
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: float = 1.5


def _conv(stride: int = 1, padding: Any = 0, groups: int = 1) -> TorchFn:
    return lambda F, x, p: F.conv2d(x, p["weight"], p.get("bias"), stride, padding, 1, groups)


def _conv_t(stride: int, padding: int = 0) -> TorchFn:
    return lambda F, x, p: F.conv_transpose2d(x, p["weight"], p.get("bias"), stride, padding)


L = "minicnn.layers."
N, C, HW = 128, 64, 28
IMAGE = (N, C, HW, HW)

CASES: tuple[LayerCase, ...] = (
    LayerCase("conv3x3", L + "conv", "Conv2D", (C, C, 3), IMAGE, _conv(padding=1),
              {"padding": 1}),
    LayerCase("conv3x3_winograd", L + "conv", "Conv2D", (C, C, 3), IMAGE, _conv(padding=1),
              {"padding": 1, "algorithm": "winograd"}),
    LayerCase("depthwise3x3", L + "conv", "Conv2D", (C, C, 3), IMAGE,
              _conv(padding=1, groups=C), {"padding": 1, "groups": C}, target=1.0),
    LayerCase("grouped3x3_g4", L + "conv", "Conv2D", (C, C, 3), (64, C, HW, HW),
              _conv(padding=1, groups=4), {"padding": 1, "groups": 4}),
    LayerCase("conv_transpose2x2_s2", L + "conv_transpose", "ConvTranspose2D", (C, 32, 2),
              (N, C, 14, 14), _conv_t(2), {"stride": 2}),
    LayerCase("conv_transpose4x4_s2", L + "conv_transpose", "ConvTranspose2D", (32, 16, 4),
              (64, 32, 14, 14), _conv_t(2, 1), {"stride": 2, "padding": 1}),
    LayerCase("maxpool2", L + "pooling", "MaxPool2D", (2,), IMAGE,
              lambda F, x, p: F.max_pool2d(x, 2)),
    LayerCase("maxpool3_s2_ceil", L + "pooling", "MaxPool2D", (3, 2, 1), IMAGE,
              lambda F, x, p: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), {"ceil_mode": True}),
    LayerCase("avgpool3_s2_nopad", L + "pooling", "AvgPool2D", (3, 2, 1), IMAGE,
              lambda F, x, p: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
              {"count_include_pad": False}),
    LayerCase("adaptive_avgpool7", L + "adaptive_pooling", "AdaptiveAvgPool2D", ((7, 7),),
              (64, C, HW, HW), lambda F, x, p: F.adaptive_avg_pool2d(x, (7, 7))),
    LayerCase("batchnorm2d", L + "normalization", "BatchNorm2D", (C,), IMAGE,
              lambda F, x, p: F.batch_norm(x, None, None, p["weight"], p["bias"], True)),
    LayerCase("batchnorm1d", L + "normalization", "BatchNorm1D", (512,), (256, 512),
              lambda F, x, p: F.batch_norm(x, None, None, p["weight"], p["bias"], True)),
    LayerCase("groupnorm8", L + "layer_norm", "GroupNorm", (8, C), IMAGE,
              lambda F, x, p: F.group_norm(x, 8, p["weight"], p["bias"])),
    LayerCase("layernorm", L + "layer_norm", "LayerNorm", ((C, HW, HW),), IMAGE,
              lambda F, x, p: F.layer_norm(x, (C, HW, HW), p["weight"], p["bias"])),
    LayerCase("upsample_nearest2", L + "upsample", "Upsample2D", (2,), (64, C, HW, HW),
              lambda F, x, p: F.interpolate(x, scale_factor=2, mode="nearest")),
    LayerCase("upsample_bilinear2", L + "upsample", "Upsample2D", (2, "bilinear"),
              (64, C, HW, HW),
              lambda F, x, p: F.interpolate(x, scale_factor=2, mode="bilinear",
                                            align_corners=False)),
    LayerCase("relu", L + "activations", "ReLU", (), IMAGE, lambda F, x, p: F.relu(x)),
    LayerCase("gelu", L + "smooth_activations", "GELU", (), IMAGE, lambda F, x, p: F.gelu(x)),
    LayerCase("gelu_tanh", L + "smooth_activations", "GELU", ("tanh",), IMAGE,
              lambda F, x, p: F.gelu(x, approximate="tanh")),
    LayerCase("silu", L + "smooth_activations", "SiLU", (), IMAGE, lambda F, x, p: F.silu(x)),
    LayerCase("elu", L + "smooth_activations", "ELU", (), IMAGE, lambda F, x, p: F.elu(x)),
)
"""Every case, in the order the report prints them."""


def find_cases(names: str | None) -> list[LayerCase]:
    """The cases named in a comma-separated list (all for None or "all"); ValueError naming
    an unknown one."""
    if names is None or names.strip().lower() in ("", "all"):
        return list(CASES)
    by_name = {c.name: c for c in CASES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown layer case(s) {', '.join(unknown)}: expected some of "
                         f"{', '.join(by_name)} (or all)")
    return [by_name[n] for n in wanted]
