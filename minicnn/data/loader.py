"""Batches for training and evaluation: the ``DataLoader`` (transforms are in ``transforms``).

A ``DataLoader`` holds the whole data set as one array on the active backend (uploaded once,
on first use) and cuts batches out of it with a permutation drawn once per epoch, so a GPU
step never waits for a host-to-device copy::

    loader = DataLoader(x_train, y_train, batch_size=128, seed=0,
                        transform=Normalize(mean=0.1307, std=0.3081), augment=RandomShift(2))
    for xb, yb in loader:          # xb float32 (128, 1, 28, 28), yb int64 (128,)
        ...

Randomness (the shuffle order and the augmentation draws) comes from the loader's own NumPy
generator; ``state_dict()`` / ``load_state_dict()`` save and restore it together with the
position inside the current epoch, so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

import numpy

from minicnn.core import backend, random
from minicnn.data.transforms import ToFloat

__all__ = ["DataLoader"]


class DataLoader:
    """Mini-batches of (x, y) on the active backend: x float32 (B, C, H, W), y int64 (B,).

    x: images (N, H, W) (a channel axis is added) or (N, C, H, W), uint8 or float; y: integer
    labels (N,), or None to yield (x, None). Each epoch draws a new order when ``shuffle``; the
    last short batch is dropped with ``drop_last``. ``transform`` maps a batch to float32
    (default ``ToFloat``: uint8 / 255); ``augment`` (e.g. ``RandomShift(2)``) runs before it.
    ``seed`` fixes the order; None draws one from the global generator (``manual_seed``).
    ``backend_name`` ('numpy' or 'cupy') is where batches go; None: the global backend.
    ``shard=(rank, size)``: yield only rank's part of every batch (distributed training: every
    rank draws the same order and batch b's samples are split among the ranks in order).
    """

    def __init__(self, x: Any, y: Any = None, batch_size: int = 128, shuffle: bool = True,
                 seed: int | None = None, drop_last: bool = False,
                 transform: Callable[[Any], Any] | None = None, augment: Any = None,
                 backend_name: str | None = None, shard: tuple[int, int] | None = None):
        x = backend.to_numpy(x)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"DataLoader: expected images (N, H, W) or (N, C, H, W), got "
                             f"shape {x.shape}")
        if x.dtype.kind not in "uif":
            raise TypeError(f"DataLoader: expected images of numbers, got dtype {x.dtype}")
        if x.dtype.kind == "f" and not numpy.isfinite(x).all():
            bad = int((~numpy.isfinite(x)).reshape(len(x), -1).any(axis=1).argmax())
            raise ValueError(f"DataLoader: the images hold NaN or inf (first in sample {bad})")
        if y is not None:
            y = backend.to_numpy(y)
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(f"DataLoader: expected labels of shape ({len(x)},), got "
                                 f"{y.shape}")
            if y.dtype.kind in "iu":
                y = y.astype(numpy.int64, copy=False)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if len(x) == 0 or (drop_last and len(x) < batch_size):
            raise ValueError(f"DataLoader: {len(x)} samples make no batch of {batch_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.transform = transform if transform is not None else ToFloat()
        self.augment = augment
        self.backend_name = backend_name
        if seed is None:
            seed = int(random.host_rng().integers(2**63))
        self.seed = seed
        self._rng = numpy.random.default_rng(seed)
        # generator state when the current epoch began
        self._epoch_state: Mapping[str, Any] | None = None
        self._position = 0                      # batches already yielded in the current epoch
        self._resume_position = 0
        self._device: tuple[str, Any, Any, Any] | None = None   # (backend, module, x, y)
        self.shard: tuple[int, int] | None = None
        if shard is not None:
            self.set_shard(*shard)

    def set_shard(self, rank: int, size: int) -> None:
        """From now on yield rank's part of every batch: rows [b*r//size, b*(r+1)//size) of a
        batch of b; the batch size must divide by ``size`` (a short last batch is split as
        evenly as it goes, and must hold at least ``size`` samples)."""
        if not 0 <= rank < size:
            raise ValueError(f"DataLoader: shard rank {rank} is outside 0..{size - 1}")
        if self.batch_size % size:
            raise ValueError(f"batch size {self.batch_size} does not split evenly among {size} "
                             f"ranks; use a multiple of {size}")
        last = 0 if self.drop_last else len(self.x) % self.batch_size
        if 0 < last < size:
            raise ValueError(f"the last batch holds {last} samples, too few for {size} ranks; "
                             "change the batch size or the number of samples")
        self.shard = (rank, size) if size > 1 else None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def _on_device(self) -> tuple[Any, Any, Any]:
        """The array module batches go to and the data set on it, uploaded once per module."""
        name = self.backend_name or backend.get_backend()
        device = self._device
        if device is None or device[0] != name:
            xp = backend.get_module(name)
            y = None if self.y is None else xp.asarray(self.y)
            device = self._device = (name, xp, xp.asarray(self.x), y)
        return device[1:]

    def __iter__(self) -> Generator[tuple[Any, Any], None, None]:
        start, self._resume_position = self._resume_position, 0
        self._epoch_state = self._rng.bit_generator.state
        n, bs = len(self.x), self.batch_size
        order = self._rng.permutation(n) if self.shuffle else numpy.arange(n)
        shifts = self.augment.sample(self._rng, n) if self.augment is not None else None
        xp, x_all, y_all = self._on_device()
        order = xp.asarray(order)              # one upload per epoch, not one per batch
        if shifts is not None:
            shifts = xp.asarray(shifts)
        try:
            for b in range(start, len(self)):
                lo, hi = b * bs, min((b + 1) * bs, n)
                if self.shard is not None:     # this rank's rows of the global batch
                    (rank, size), count = self.shard, hi - lo
                    lo, hi = lo + count * rank // size, lo + count * (rank + 1) // size
                index = order[lo:hi]
                xb = x_all[index]
                if shifts is not None:
                    xb = self.augment.apply(xb, shifts[lo:hi])
                xb = self.transform(xb)
                yb = None if y_all is None else y_all[index]
                self._position = b + 1
                yield xb, yb
        finally:
            self._position = 0

    def state_dict(self) -> dict[str, Any]:
        """The generator state and the position in the current epoch (JSON-serialisable).

        Taken mid-epoch (while iterating), it restarts that epoch at the next batch.
        """
        if self._position:
            return {"rng": self._epoch_state, "position": self._position, "seed": self.seed}
        return {"rng": self._rng.bit_generator.state, "position": 0, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``: the next iteration continues where that one stood."""
        position = int(state.get("position", 0))
        if not 0 <= position <= len(self):
            raise ValueError(f"DataLoader.load_state_dict: position {position} is outside an "
                             f"epoch of {len(self)} batches")
        self._rng.bit_generator.state = state["rng"]
        self._resume_position = position

    def for_eval(self, batch_size: int = 256) -> DataLoader:
        """A loader over the same data, in order, without augmentation, in batches of
        ``batch_size`` (256 by default: bigger batches are no faster on a CPU, and every extra
        image holds ~200 KB of activations of the reference CNN at once)."""
        return DataLoader(self.x, self.y, batch_size=batch_size, shuffle=False, seed=0,
                          transform=self.transform, backend_name=self.backend_name)

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.x)} samples of {self.x.shape[1:]} {self.x.dtype}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"transform={self.transform!r}, augment={self.augment!r})")
