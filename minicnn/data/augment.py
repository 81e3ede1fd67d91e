"""Augmentation: random, per-sample changes to training images, reproducible for a seed.

Every augmentation has the ``DataLoader``'s two-step protocol: ``sample(rng, n)`` draws the
parameters of n images on the host (a float64 (n, k) array, from the loader's own generator,
once per epoch), and ``apply(x, params)`` transforms a batch x (N, C, H, W) on its own array
module with those rows, keeping its dtype (uint8 pixels stay uint8). So a seeded run draws the
same changes whatever the backend, and a resumed epoch redraws them exactly. ``config()`` and
``augmentation_from_config`` let a checkpoint record the augmentation a model was trained with,
and ``parse_augmentation("crop=2,flip")`` builds one from the command line's spec.

* ``RandomCrop(padding)``: pad by ``padding`` zeros and crop back to the input size at a
  random offset (torchvision's ``RandomCrop(size, padding)``): a shift in [-p, p]^2.
* ``RandomHorizontalFlip(p=0.5)``: mirror left-right (not for digits).
* ``RandomAffine(degrees, translate, scale)``: rotate by U(-degrees, degrees), shift by up to
  translate * size, scale by U(scale); bilinear, zeros outside (small ones suit digits).
* ``Cutout(size)``: zero a size x size square at a random centre (clipped at the borders).
* ``Compose([...])``: several, in order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy

from minicnn.core import backend
from minicnn.data.transforms import RandomShift

__all__ = ["RandomCrop", "RandomHorizontalFlip", "RandomAffine", "Cutout", "Compose",
           "augmentation_from_config", "parse_augmentation"]


class RandomCrop(RandomShift):
    """Pad with ``padding`` zeros, crop back at a random offset: a random shift in [-p, p]."""

    def __init__(self, padding: int = 2):
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        super().__init__(padding)

    def config(self) -> dict[str, Any]:
        return {"class": "RandomCrop", "padding": self.max_shift}

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.max_shift})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def sample(self, rng: numpy.random.Generator, n: int) -> numpy.ndarray:
        return (rng.random((n, 1)) < self.p).astype(numpy.float64)

    def apply(self, x: Any, params: Any) -> Any:
        """x (N, C, H, W), params (N, 1) of 0/1 -> x with the rows of 1 mirrored."""
        xp = backend.get_array_module(x)
        flip = params[:, 0] > 0.5
        return xp.where(flip[:, None, None, None], x[..., ::-1], x)

    def config(self) -> dict[str, Any]:
        return {"class": "RandomHorizontalFlip", "p": self.p}

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomAffine:
    """Rotate, shift and scale each image about its centre by random amounts; bilinear, zeros
    outside the image. Output pixel (i, j) reads the input at A^-1 ((i, j) - centre - t) +
    centre, A = scale * rotation."""

    def __init__(self, degrees: float = 10.0, translate: float = 0.1,
                 scale: tuple[float, float] = (0.9, 1.1)):
        lo, hi = (float(s) for s in scale)
        if degrees < 0 or not 0.0 <= translate < 1.0 or not 0 < lo <= hi:
            raise ValueError(f"RandomAffine: expected degrees >= 0, 0 <= translate < 1 and "
                             f"0 < scale[0] <= scale[1], got degrees={degrees}, "
                             f"translate={translate}, scale={scale}")
        self.degrees, self.translate, self.scale = float(degrees), float(translate), (lo, hi)

    def sample(self, rng: numpy.random.Generator, n: int) -> numpy.ndarray:
        """(n, 4): angle (radians), shift as fractions of (H, W), scale."""
        angle = numpy.deg2rad(rng.uniform(-self.degrees, self.degrees, n))
        shift = rng.uniform(-self.translate, self.translate, (n, 2))
        scale = rng.uniform(*self.scale, n)
        return numpy.column_stack([angle, shift, scale])

    def apply(self, x: Any, params: Any) -> Any:
        """x (N, C, H, W), params (N, 4) -> the transformed batch, same dtype."""
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        angle, scale = params[:, 0], params[:, 3]
        ty, tx = params[:, 1] * h, params[:, 2] * w
        cos, sin = xp.cos(angle) / scale, xp.sin(angle) / scale        # the inverse map
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        i = xp.arange(h, dtype=xp.float64)[None, :, None] - cy - ty[:, None, None]
        j = xp.arange(w, dtype=xp.float64)[None, None, :] - cx - tx[:, None, None]
        src_i = cos[:, None, None] * i - sin[:, None, None] * j + cy     # (N, H, W)
        src_j = sin[:, None, None] * i + cos[:, None, None] * j + cx
        return _bilinear(x, src_i, src_j)

    def config(self) -> dict[str, Any]:
        return {"class": "RandomAffine", "degrees": self.degrees, "translate": self.translate,
                "scale": list(self.scale)}

    def __repr__(self) -> str:
        return (f"RandomAffine(degrees={self.degrees}, translate={self.translate}, "
                f"scale={self.scale})")


def _bilinear(x: Any, src_i: Any, src_j: Any) -> Any:
    """Sample x (N, C, H, W) at fractional (src_i, src_j) (N, H', W'), zeros outside."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    values = x.astype(xp.float32)
    i0, j0 = xp.floor(src_i).astype(xp.int64), xp.floor(src_j).astype(xp.int64)
    fi, fj = (src_i - i0).astype(xp.float32), (src_j - j0).astype(xp.float32)
    batch = xp.arange(n)[:, None, None]
    out = xp.zeros((n, c, *src_i.shape[1:]), dtype=xp.float32)
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            r, q = i0 + di, j0 + dj
            inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
            picked = values[batch, :, xp.clip(r, 0, h - 1), xp.clip(q, 0, w - 1)]  # (N,H,W,C)
            weight = wi * wj * inside
            out += (picked * weight[..., None]).transpose(0, 3, 1, 2)
    if x.dtype.kind == "u":
        info = xp.iinfo(x.dtype)
        return xp.clip(xp.rint(out), info.min, info.max).astype(x.dtype)
    return out.astype(x.dtype, copy=False)


class Cutout:
    """Zero a ``size`` x ``size`` square at a uniformly random centre (DeVries and Taylor),
    clipped at the borders, with probability ``p``."""

    def __init__(self, size: int = 8, p: float = 1.0):
        if not isinstance(size, int) or size < 1 or not 0.0 <= p <= 1.0:
            raise ValueError(f"Cutout: expected an int size >= 1 and p in [0, 1], got "
                             f"size={size!r}, p={p!r}")
        self.size, self.p = size, float(p)

    def sample(self, rng: numpy.random.Generator, n: int) -> numpy.ndarray:
        """(n, 3): centre as fractions of (H, W) in [0, 1), and 1 where a square is cut."""
        centre = rng.random((n, 2))
        return numpy.column_stack([centre, rng.random(n) < self.p]).astype(numpy.float64)

    def apply(self, x: Any, params: Any) -> Any:
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        ci = xp.floor(params[:, 0] * h).astype(xp.int64)[:, None]
        cj = xp.floor(params[:, 1] * w).astype(xp.int64)[:, None]
        lo = self.size // 2
        rows = xp.arange(h)[None, :]
        cols = xp.arange(w)[None, :]
        in_rows = (rows >= ci - lo) & (rows < ci - lo + self.size)         # (N, H)
        in_cols = (cols >= cj - lo) & (cols < cj - lo + self.size)         # (N, W)
        cut = in_rows[:, :, None] & in_cols[:, None, :] & (params[:, 2] > 0.5)[:, None, None]
        return xp.where(cut[:, None], xp.zeros((), dtype=x.dtype), x)

    def config(self) -> dict[str, Any]:
        return {"class": "Cutout", "size": self.size, "p": self.p}

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, p={self.p})"


class Compose:
    """Several augmentations in order; their parameters side by side in one (n, k) array."""

    def __init__(self, augmentations: Sequence[Any]):
        self.augmentations = list(augmentations)

    def sample(self, rng: numpy.random.Generator, n: int) -> numpy.ndarray:
        parts = [numpy.asarray(a.sample(rng, n), dtype=numpy.float64).reshape(n, -1)
                 for a in self.augmentations]
        self._widths = [p.shape[1] for p in parts]
        return numpy.concatenate(parts, axis=1) if parts else numpy.zeros((n, 0))

    def apply(self, x: Any, params: Any) -> Any:
        start = 0
        for a, width in zip(self.augmentations, self._widths):
            x = a.apply(x, params[:, start:start + width])
            start += width
        return x

    def config(self) -> dict[str, Any]:
        return {"class": "Compose", "augmentations": [a.config() for a in self.augmentations]}

    def __repr__(self) -> str:
        return f"Compose({self.augmentations!r})"


_CLASSES: dict[str, Any] = {"RandomCrop": RandomCrop, "RandomHorizontalFlip":
                            RandomHorizontalFlip, "RandomAffine": RandomAffine,
                            "Cutout": Cutout}


def augmentation_from_config(config: dict[str, Any] | None) -> Any:
    """Rebuild an augmentation from its ``config()`` (None -> None)."""
    if not config:
        return None
    name = config.get("class")
    if name == "Compose":
        return Compose([augmentation_from_config(c) for c in config["augmentations"]])
    if name == "RandomShift":
        return RandomShift(config["max_shift"])
    if name not in _CLASSES:
        raise ValueError(f"unknown augmentation {name!r}: expected one of "
                         f"{', '.join(['Compose', 'RandomShift', *_CLASSES])}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()
              if k != "class"}
    return _CLASSES[name](**kwargs)


_SPEC_HELP = ("shift=K, crop=P, flip[=p], affine=DEGREES, cutout=SIZE, or none, comma-separated "
              "(e.g. crop=2,flip)")


def parse_augmentation(spec: str | int | None) -> Any:
    """An augmentation from a spec such as ``"crop=2,flip"`` or ``"affine=10,cutout=8"`` (an
    int K alone is ``shift=K``; ``"none"``, "0" or None: no augmentation); ValueError naming
    the part it cannot read."""
    if spec is None or str(spec).strip().lower() in ("", "none", "0"):
        return None
    if isinstance(spec, int) or str(spec).strip().isdigit():
        return RandomShift(int(spec))
    parts: list[Any] = []
    for item in str(spec).split(","):
        name, _, value = item.strip().partition("=")
        try:
            if name == "shift":
                parts.append(RandomShift(int(value)))
            elif name == "crop":
                parts.append(RandomCrop(int(value)))
            elif name == "flip":
                parts.append(RandomHorizontalFlip(float(value) if value else 0.5))
            elif name == "affine":
                degrees = float(value)
                if not math.isfinite(degrees):
                    raise ValueError
                parts.append(RandomAffine(degrees))
            elif name == "cutout":
                parts.append(Cutout(int(value)))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"augmentation {item.strip()!r}: expected {_SPEC_HELP}") from None
    return parts[0] if len(parts) == 1 else Compose(parts)
