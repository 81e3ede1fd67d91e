"""The reference training recipe, as data, and optimizers built by name.

``REFERENCE_RECIPE`` holds the hyper-parameters the command line uses by default;
``OPTIMIZER_DEFAULTS`` each optimizer's (SGD's are the recipe's, written once there), and
``make_optimizer`` turns a name and overrides into an optimizer over a model's parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from minicnn.training.optimizers import OPTIMIZERS, Optimizer

__all__ = ["Recipe", "REFERENCE_RECIPE", "OPTIMIZER_DEFAULTS", "make_optimizer"]


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters: SGD with momentum and weight decay, a per-step lr schedule,
    and the input normalisation (mean and std of the pixels scaled to [0, 1])."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"       # over the whole run, one lr per step
    batch_size: int = 128
    epochs: int = 3
    mean: float = 0.1307
    std: float = 0.3081
    augment: int | str = 1         # random shifts of up to 1 pixel while training (0: none;
    #                                or a spec such as "crop=2,flip", or "auto": the data set's)
    optimizer: str = "sgd"
    val_split: int = 5000          # training images held out for validation (0: none)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


REFERENCE_RECIPE = Recipe()
"""The reference recipe: lr 0.05, momentum 0.9, weight decay 5e-4, cosine decay over the
whole run, batch 128, Normalize(0.1307, 0.3081), 3 epochs, plus random shifts of up to one
pixel (without them the ref-cnn ends near 99.0% and under it for some seeds; see README)."""

OPTIMIZER_DEFAULTS = {
    "sgd": {"lr": REFERENCE_RECIPE.lr, "momentum": REFERENCE_RECIPE.momentum,
            "weight_decay": REFERENCE_RECIPE.weight_decay},
    "adam": {"lr": 0.001, "momentum": 0.0, "weight_decay": 0.0},
    "adamw": {"lr": 0.001, "momentum": 0.0, "weight_decay": 0.01},
    "rmsprop": {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0},
    "adagrad": {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0},
}
"""Each optimizer's defaults for the command line: the recipe's for SGD, PyTorch's for the
others (momentum is SGD's and RMSprop's only)."""


def make_optimizer(model: Any, name: str = "sgd", lr: float | None = None,
                   momentum: float | None = None, weight_decay: float | None = None
                   ) -> Optimizer:
    """'sgd', 'adam', 'adamw', 'rmsprop' or 'adagrad' over the model's parameters; unset
    hyper-parameters take ``OPTIMIZER_DEFAULTS[name]``; ``momentum`` only for SGD and RMSprop
    (ValueError for the others)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    d = OPTIMIZER_DEFAULTS[name]
    lr = d["lr"] if lr is None else lr
    weight_decay = d["weight_decay"] if weight_decay is None else weight_decay
    if name in ("sgd", "rmsprop"):
        return OPTIMIZERS[name](model.parameters(), lr=lr, weight_decay=weight_decay,
                                momentum=d["momentum"] if momentum is None else momentum)
    if momentum:
        raise ValueError(f"{name} has no momentum (SGD and RMSprop do), got momentum={momentum}")
    return OPTIMIZERS[name](model.parameters(), lr=lr, weight_decay=weight_decay)
