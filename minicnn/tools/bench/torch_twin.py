"""The same model in PyTorch: ``torch_model_from`` copies a minicnn ``Sequential`` (weights
included) into a ``torch.nn.Sequential``, and ``TorchRunner`` times its step and inference with
the same SGD and loss. PyTorch is imported only by the caller (``--compare torch``).

On CUDA, building a ``TorchRunner`` applies ``cuda_settings``: TF32 off for matrix multiplies
and cuDNN convolutions (so both frameworks compute in full float32, as CuPy does unless
``CUPY_TF32=1``) and ``cudnn.benchmark`` on (cuDNN picks its fastest algorithm per shape during
the bench's warm-up steps). These are PyTorch's process-wide flags; importing this module sets
nothing."""
from __future__ import annotations

from typing import Any

import numpy

from minicnn.core import backend
from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.models import Sequential
from minicnn.training.recipe import REFERENCE_RECIPE as RECIPE


def torch_model_from(model: Sequential, torch: Any = None) -> Any:
    """A ``torch.nn.Sequential`` computing exactly what ``model`` computes, weights copied.

    Conv2D weights are (O, C, kh, kw) in both frameworks; a minicnn Dense weight is
    (in, out) and a torch Linear weight (out, in), so it is transposed.
    """
    if torch is None:
        import torch as torch_module
        torch = torch_module
    nn = torch.nn

    def tensor(a: Any) -> Any:
        return torch.from_numpy(numpy.ascontiguousarray(backend.to_numpy(a)))

    modules = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            top, left, bottom, right = layer.pads
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             layer.stride, 0, layer.dilation, groups=layer.groups,
                             bias=layer.bias is not None)
            m = conv if not any(layer.pads) else \
                nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
            weights = [(conv.weight, layer.weight.data)]
        elif isinstance(layer, Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            weights = [(m.weight, layer.weight.data.T)]
        elif isinstance(layer, MaxPool2D):
            m, weights = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding), []
        elif isinstance(layer, (ReLU, Flatten)):
            m, weights = (nn.ReLU() if isinstance(layer, ReLU) else nn.Flatten()), []
        else:
            raise ValueError(f"bench: no PyTorch equivalent for {layer!r}")
        bias = getattr(layer, "bias", None)
        if bias is not None:
            weights.append((conv.bias if isinstance(layer, Conv2D) else m.bias, bias.data))
        with torch.no_grad():
            for target, source in weights:
                target.copy_(tensor(source))
        modules.append(m)
        activation = getattr(layer, "activation", None)
        if activation is not None:
            if not isinstance(activation, ReLU):
                raise ValueError(f"bench: no PyTorch equivalent for activation {activation!r}")
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


CUDA_SETTINGS = {"torch.backends.cuda.matmul.allow_tf32": False,
                 "torch.backends.cudnn.allow_tf32": False,
                 "torch.backends.cudnn.benchmark": True}
"""What ``cuda_settings`` sets before PyTorch runs on a GPU."""


def cuda_settings(torch: Any) -> dict[str, Any]:
    """Set ``CUDA_SETTINGS`` in ``torch`` (process-wide flags) and return them as read back,
    with PyTorch's newer ``fp32_precision`` fields where it has them, for the bench's JSON."""
    torch.backends.cuda.matmul.allow_tf32 = CUDA_SETTINGS["torch.backends.cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = CUDA_SETTINGS["torch.backends.cudnn.allow_tf32"]
    torch.backends.cudnn.benchmark = CUDA_SETTINGS["torch.backends.cudnn.benchmark"]
    read = {"torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark}
    for name, obj in (("torch.backends.cuda.matmul.fp32_precision", torch.backends.cuda.matmul),
                      ("torch.backends.cudnn.conv.fp32_precision",
                       getattr(torch.backends.cudnn, "conv", None))):
        value = getattr(obj, "fp32_precision", None)
        if isinstance(value, str):
            read[name] = value
    return read


class TorchRunner:
    """The same model, data and optimizer in PyTorch on ``device`` ('cpu' or 'cuda'); on
    'cuda' it applies ``cuda_settings`` first (``settings`` holds them; {} on the CPU)."""

    name = "torch"

    def __init__(self, torch: Any, model: Sequential, device: str, x: Any, y: Any, xi: Any = None):
        self.torch, self.device = torch, device
        self.settings = cuda_settings(torch) if device == "cuda" else {}
        self.net = torch_model_from(model, torch).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=RECIPE.lr,
                                   momentum=RECIPE.momentum,
                                   weight_decay=RECIPE.weight_decay)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x, self.y, self.xi = (None if a is None else torch.from_numpy(a).to(device)
                                   for a in (x, y, xi))

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad()
        self.loss(self.net(self.x), self.y).backward()
        self.opt.step()

    def infer(self) -> Any:
        self.net.eval()
        with self.torch.no_grad():
            return self.net(self.xi)
