"""Named models: ``build_model("ref-cnn")``, ``build_model("lenet5")``.

Each returns a fresh ``Sequential`` for 1x28x28 images and 10 classes, its weights drawn from
the global generator (``minicnn.manual_seed``). The recipe they train with by default is
``minicnn.training.recipe.REFERENCE_RECIPE`` (also importable from here, as in 0.1).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minicnn.models import Sequential
from minicnn.training.recipe import (
    OPTIMIZER_DEFAULTS,
    REFERENCE_RECIPE,
    Recipe,
    make_optimizer,
)
from minicnn.training.schedules import SCHEDULES, make_schedule
from minicnn.zoo.reference import lenet5, ref_cnn

__all__ = ["MODELS", "build_model", "ref_cnn", "lenet5", "Recipe", "REFERENCE_RECIPE",
           "SCHEDULES", "OPTIMIZER_DEFAULTS", "make_optimizer", "make_schedule"]

MODELS: dict[str, Callable[..., Sequential]] = {"ref-cnn": ref_cnn, "lenet5": lenet5}


def build_model(name: str, **kwargs: Any) -> Sequential:
    """A freshly initialised model by name ('ref-cnn' or 'lenet5'), keyword arguments passed on
    (``build_model("ref-cnn", width_mult=2)``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
