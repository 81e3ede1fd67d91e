"""Transforms and augmentation: what a batch of raw images goes through before the model.

``ToFloat`` (uint8 to float32 in [0, 1]) and ``Normalize`` are applied to every batch; their
``config()`` is saved in checkpoints and ``transform_from_config`` rebuilds them, so a model
keeps its preprocessing. ``RandomShift`` moves training images by a few pixels.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy

from minicnn.core import backend

__all__ = ["ToFloat", "Normalize", "RandomShift", "transform_from_config", "model_transform",
           "raw_input_transform"]


def _is_uint8(x: Any) -> bool:
    return x.dtype.kind == "u" and x.dtype.itemsize == 1


def _to_float(x: Any) -> Any:
    """float32 version of a batch: uint8 pixels scaled to [0, 1], other dtypes cast unchanged."""
    if _is_uint8(x):
        y = x.astype(backend.default_dtype)
        y *= y.dtype.type(1.0 / 255.0)
        return y
    return x.astype(backend.default_dtype, copy=False)


class ToFloat:
    """Batch -> float32; uint8 pixels are divided by 255 (the loader's default transform)."""

    def __call__(self, x: Any) -> Any:
        return _to_float(x)

    def config(self) -> dict[str, Any]:
        return {"class": "ToFloat"}

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """(x - mean) / std on float32 batches; uint8 pixels are first scaled to [0, 1] by /255.

    ``Normalize(mean=0.1307, std=0.3081)`` gives MNIST training images zero mean and unit
    variance. mean and std are scalars (one value for all channels).
    """

    def __init__(self, mean: float, std: float):
        if not std > 0:
            raise ValueError(f"Normalize: std must be > 0, got {std!r}")
        self.mean, self.std = float(mean), float(std)

    def __call__(self, x: Any) -> Any:
        """x (any shape, uint8 or float) -> float32 (x * scale - mean) / std, a new array."""
        scale = 1.0 / 255.0 if _is_uint8(x) else 1.0
        y = x.astype(backend.default_dtype)            # always a copy: x is left alone
        y *= y.dtype.type(scale / self.std)
        y -= y.dtype.type(self.mean / self.std)
        return y

    def config(self) -> dict[str, Any]:
        return {"class": "Normalize", "mean": self.mean, "std": self.std}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def transform_from_config(config: dict[str, Any] | None) -> Callable[[Any], Any]:
    """Rebuild a transform from its ``config()`` (as stored in checkpoints); None -> ToFloat."""
    if not config or config.get("class") == "ToFloat":
        return ToFloat()
    if config.get("class") == "Normalize":
        return Normalize(config["mean"], config["std"])
    raise ValueError(f"unknown transform {config!r}")


def model_transform(model: Any) -> Any:
    """The transform raw images go through before ``model``: its ``input_transform`` (set by
    ``fit`` from its loader, saved in checkpoints and restored by ``load``), or None. The one
    place every consumer (predict, evaluate, export, visualize, the command line) reads it."""
    return getattr(model, "input_transform", None)


def raw_input_transform(model: Any, x: Any = None, stacklevel: int = 2) -> Callable[[Any], Any]:
    """``model_transform(model)``, or ToFloat for a model without one, warning once per model
    when uint8 pixels ``x`` (None: any input) meet a model that never learned its transform."""
    transform = model_transform(model)
    if transform is not None:
        return transform
    pixels = x is None or (getattr(x, "dtype", None) is not None and x.dtype.kind == "u")
    if pixels and not getattr(model, "_warned_transform", False):
        warnings.warn(f"{type(model).__name__} has no input transform (train it with fit, or "
                      "load a checkpoint that has one): uint8 pixels are only scaled to [0, 1]",
                      stacklevel=stacklevel + 1)
        model._warned_transform = True
    return ToFloat()


class RandomShift:
    """Shift each image by a random (dy, dx) in [-max_shift, max_shift]^2, filling with zeros.

    ``sample(rng, n)`` draws the shifts for n images on the host (int64 (n, 2)); ``apply(x,
    shifts)`` shifts a batch x (N, C, H, W) on its own backend, so the loader can draw a whole
    epoch's shifts at once and upload them in one copy.
    """

    def __init__(self, max_shift: int = 2):
        if not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"RandomShift: max_shift must be an int >= 0, got {max_shift!r}")
        self.max_shift = max_shift

    def sample(self, rng: numpy.random.Generator, n: int) -> numpy.ndarray:
        return rng.integers(-self.max_shift, self.max_shift + 1, size=(n, 2))

    def apply(self, x: Any, shifts: Any) -> Any:
        """x (N, C, H, W), shifts (N, 2) -> out with out[n, :, i, j] = x[n, :, i - dy, j - dx]."""
        k = self.max_shift
        if k == 0:
            return x
        xp = backend.get_array_module(x)
        n, _, h, w = x.shape
        shifts = shifts.astype(xp.int64, copy=False)      # float rows, from a Compose
        padded = xp.pad(x, ((0, 0), (0, 0), (k, k), (k, k)))
        rows = xp.arange(h)[None, :] + (k - shifts[:, 0:1])          # (N, H)
        cols = xp.arange(w)[None, :] + (k - shifts[:, 1:2])          # (N, W)
        batch = xp.arange(n)[:, None, None]
        # Advanced indices around a slice put their axes first: the result is (N, H, W, C).
        out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
        return xp.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def config(self) -> dict[str, Any]:
        return {"class": "RandomShift", "max_shift": self.max_shift}

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"
