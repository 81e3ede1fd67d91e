"""The same model in PyTorch: ``TorchRunner`` times the step and inference of the twin that
``torch_layers.torch_model_from`` builds (weights and state copied), with the same SGD and loss
(cross-entropy for labels, BCE-with-logits for target images). PyTorch is imported only by the
caller (``--compare torch``).

On CUDA, building a ``TorchRunner`` applies ``cuda_settings``: TF32 off for matrix multiplies
and cuDNN convolutions (so both frameworks compute in full float32, as CuPy does unless
``CUPY_TF32=1``) and ``cudnn.benchmark`` on (cuDNN picks its fastest algorithm per shape during
the bench's warm-up steps). These are PyTorch's process-wide flags; importing this module sets
nothing."""
from __future__ import annotations

from typing import Any

from minicnn.models import Network
from minicnn.tools.bench.runners import image_targets
from minicnn.tools.bench.torch_layers import torch_model_from
from minicnn.training.recipe import REFERENCE_RECIPE as RECIPE

__all__ = ["TorchRunner", "torch_model_from", "cuda_settings", "CUDA_SETTINGS"]


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

    def __init__(self, torch: Any, model: Network, device: str, x: Any, y: Any, xi: Any = None):
        self.torch, self.device = torch, device
        self.settings = cuda_settings(torch) if device == "cuda" else {}
        self.net = torch_model_from(model, torch).to(device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=RECIPE.lr,
                                   momentum=RECIPE.momentum,
                                   weight_decay=RECIPE.weight_decay)
        self.loss = torch.nn.BCEWithLogitsLoss() if image_targets(y) else \
            torch.nn.CrossEntropyLoss()
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
