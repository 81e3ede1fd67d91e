"""What a checkpoint needs from a layer class: its name in the registry, and constructor
arguments it can store as JSON. Both are checked when the class is defined or the layer made.

* ``LAYER_REGISTRY`` maps class names to classes, so ``minicnn.load`` rebuilds a model from its
  JSON description. A class whose name is taken by a class of another module is refused at its
  definition (it would replace the other for every later load); redefining a class in its own
  module (a reload, a notebook cell run again) replaces it. Abstract bases
  (``class Base(Layer, abstract=True)``) and private classes (``_Name``) are not registered.
* ``check_json_arguments`` refuses, when the layer is constructed, an argument that a
  checkpoint cannot store (the layer's ``config()``), naming the layer, the argument and its type.
"""
from __future__ import annotations

from typing import Any

__all__ = ["LAYER_REGISTRY", "register", "check_json_arguments"]

LAYER_REGISTRY: dict[str, type] = {}
"""Every loadable Layer subclass by class name: what a checkpoint rebuilds a model from."""


def register(cls: type) -> None:
    """Add ``cls`` under its name; TypeError when a class of another module holds the name."""
    name = cls.__name__
    old = LAYER_REGISTRY.get(name)
    if old is not None and old.__module__ != cls.__module__:
        raise TypeError(f"layer class {name} of module {cls.__module__} has the name of "
                        f"{old.__module__}.{old.__qualname__}, already a registered layer; "
                        "checkpoints name layers by class, so give it another name")
    LAYER_REGISTRY[name] = cls


def _json_friendly(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_json_friendly(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_friendly(v) for k, v in value.items())
    # a NumPy or CuPy scalar (float32(0.5)): stored as its Python number
    return getattr(value, "ndim", None) == 0 and hasattr(value, "item") and \
        isinstance(value.item(), bool | int | float)


def check_json_arguments(cls: type, arguments: dict[str, Any]) -> None:
    """TypeError naming the layer, the argument and its type if an argument cannot be
    stored as JSON (numbers, strings, None, and lists, tuples and dicts of them)."""
    for key, value in arguments.items():
        if not _json_friendly(value):
            raise TypeError(f"{cls.__name__}: constructor argument {key} is a "
                            f"{type(value).__name__} ({value!r:.40}), which a checkpoint cannot "
                            "store as JSON; pass numbers, strings, None, or lists, tuples and "
                            f"dicts of them (or give {cls.__name__} a config() that converts it)")
