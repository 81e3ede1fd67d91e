"""Check a model description (the JSON a checkpoint holds) before anything is built from it.

A description is ``{"class": "Sequential" | "Model", "name": str, "config": {...}}``; a
Sequential's config lists layer entries (``{"class", "name", "config"}``, possibly models
again), a Model's lists nodes (layer entries with ``"inputs"``: indices of earlier tensors, 0
being the input). ``check_model_description`` walks it without recursion and enforces the
structure and the caps below, so a hostile file fails in milliseconds with one ``ValueError``
that says where.
"""
from __future__ import annotations

from typing import Any

MAX_LAYERS = 10_000
"""Most layer entries one description may hold, nested ones included."""
MAX_DEPTH = 32
"""Deepest nesting of models inside models."""
MAX_DIM = 1 << 20
"""Largest size of one axis of a declared input shape."""

MODEL_CLASSES = ("Sequential", "Model")


def check_model_description(entry: Any) -> None:
    """Raise ValueError (saying where) unless ``entry`` is a well-formed model description."""
    _check_entry(entry, "model")
    if entry["class"] not in MODEL_CLASSES:
        raise ValueError(f"model: class {entry['class']!r} is not a Sequential or Model")
    stack = [(entry, "model", 1)]
    layers = 0
    while stack:
        entry, where, depth = stack.pop()
        layers += 1
        if layers > MAX_LAYERS:
            raise ValueError(f"more than {MAX_LAYERS:,} layers")
        if entry["class"] not in MODEL_CLASSES:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"models nested more than {MAX_DEPTH} deep")
        config = entry["config"]
        _check_shape(config.get("input_shape"), f"{where}.input_shape",
                     optional=entry["class"] == "Sequential")
        key = "layers" if entry["class"] == "Sequential" else "nodes"
        children = config.get(key)
        if not isinstance(children, list):
            raise ValueError(f"{where}: config.{key} must be a list, got "
                             f"{type(children).__name__}")
        if len(children) > MAX_LAYERS:
            raise ValueError(f"{where}: more than {MAX_LAYERS:,} layers")
        for i, child in enumerate(children):
            child_where = f"{where}.{key}[{i}]" if len(where) < 120 else f"...{key}[{i}]"
            _check_entry(child, child_where)
            if key == "nodes":
                _check_inputs(child.get("inputs"), i, child_where)
            stack.append((child, child_where, depth + 1))


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a layer entry (an object), got "
                         f"{type(entry).__name__}")
    if not isinstance(entry.get("class"), str):
        raise ValueError(f"{where}: 'class' must be a string, got {entry.get('class')!r:.40}")
    if not isinstance(entry.get("config"), dict):
        raise ValueError(f"{where}: 'config' must be an object, got "
                         f"{type(entry.get('config')).__name__}")
    if not isinstance(entry.get("name", ""), str):
        raise ValueError(f"{where}: 'name' must be a string")


def _check_inputs(inputs: Any, index: int, where: str) -> None:
    if not isinstance(inputs, list) or not inputs or not all(
            type(i) is int and 0 <= i <= index for i in inputs):
        raise ValueError(f"{where}: 'inputs' must list indices of earlier tensors (0 to "
                         f"{index}), got {inputs!r:.60}")


def _check_shape(shape: Any, where: str, optional: bool) -> None:
    if shape is None and optional:
        return
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(
            type(d) is int and 1 <= d <= MAX_DIM for d in shape):
        raise ValueError(f"{where}: expected a list of 1 to 8 positive sizes, got "
                         f"{shape!r:.60}")
