"""Tests for minicnn.data: DataLoader batches, shuffling and its saved state, transforms,
and augmentation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import mnist_root

from minicnn import data
from minicnn.data import DataLoader, Normalize, RandomShift, ToFloat


def images(n: int = 10, h: int = 6, w: int = 5) -> tuple[np.ndarray, np.ndarray]:
    x = (np.arange(n * h * w) % 256).astype(np.uint8).reshape(n, h, w)
    x[:, 0, 0] = np.arange(n)          # sample i is recognisable by its first pixel
    return x, np.arange(n) % 3


def first_pixels(batch: np.ndarray) -> list[int]:
    return np.rint(np.asarray(batch)[:, 0, 0, 0] * 255).astype(int).tolist()


def epoch_order(loader: DataLoader) -> list[int]:
    return [i for xb, _ in loader for i in first_pixels(xb)]


# --------------------------------------------------------------------------- batches

def test_batches_shapes_and_dtypes():
    x, y = images(10)
    loader = DataLoader(x, y, batch_size=4, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b[0].shape for b in batches] == [(4, 1, 6, 5), (4, 1, 6, 5), (2, 1, 6, 5)]
    for xb, yb in batches:
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        assert xb.flags.c_contiguous
    assert np.array_equal(np.concatenate([b[1] for b in batches]), y)
    # the default transform scales uint8 to [0, 1]
    assert np.allclose(np.concatenate([b[0] for b in batches])[:, 0], x / 255.0, atol=1e-7)


def test_drop_last_and_four_d_float_input():
    x = np.random.default_rng(0).random((10, 2, 3, 3))          # float64, (N, C, H, W)
    loader = DataLoader(x, np.zeros(10, np.int32), batch_size=4, drop_last=True, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert all(xb.shape == (4, 2, 3, 3) and xb.dtype == np.float32 for xb, _ in batches)
    assert all(yb.dtype == np.int64 for _, yb in batches)
    # floats are cast, not rescaled
    values = np.sort(np.concatenate([xb.ravel() for xb, _ in batches]))
    assert set(values.tolist()) <= set(x.astype(np.float32).ravel().tolist())


def test_labels_optional_and_checked():
    x, _ = images(5)
    assert [yb for _, yb in DataLoader(x, None, batch_size=2)] == [None, None, None]
    with pytest.raises(ValueError, match="labels of shape"):
        DataLoader(x, np.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(x, None, batch_size=8, drop_last=True)


# --------------------------------------------------------------------------- shuffling

def test_shuffle_is_a_reproducible_permutation_per_epoch():
    x, y = images(23)
    a = DataLoader(x, y, batch_size=5, seed=7)
    b = DataLoader(x, y, batch_size=5, seed=7)
    first, second = epoch_order(a), epoch_order(a)
    assert sorted(first) == sorted(second) == list(range(23))
    assert first != second                                  # a new order every epoch
    assert [epoch_order(b), epoch_order(b)] == [first, second]
    assert epoch_order(DataLoader(x, y, batch_size=5, seed=8)) != first
    assert epoch_order(DataLoader(x, y, batch_size=5, shuffle=False)) == list(range(23))
    # labels travel with their images
    for xb, yb in DataLoader(x, y, batch_size=5, seed=3):
        assert np.array_equal(np.array(first_pixels(xb)) % 3, yb)


def test_seed_none_follows_the_global_seed():
    import minicnn
    x, y = images(20)
    minicnn.manual_seed(3)
    first = epoch_order(DataLoader(x, y, batch_size=4))
    minicnn.manual_seed(3)
    assert epoch_order(DataLoader(x, y, batch_size=4)) == first


def test_state_dict_resumes_mid_epoch_exactly():
    x, y = images(30)
    reference = DataLoader(x, y, batch_size=4, seed=5, augment=RandomShift(1))
    epoch_order(reference)
    expected = [xb.copy() for xb, _ in reference]            # the second epoch's batches

    loader = DataLoader(x, y, batch_size=4, seed=5, augment=RandomShift(1))
    epoch_order(loader)
    it = iter(loader)
    seen = [next(it)[0].copy() for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))     # JSON-serialisable
    assert state["position"] == 3
    it.close()

    resumed = DataLoader(x, y, batch_size=4, seed=999, augment=RandomShift(1))
    resumed.load_state_dict(state)
    rest = [xb for xb, _ in resumed]
    assert len(rest) == len(expected) - 3
    for got, want in zip(seen + rest, expected):
        assert np.array_equal(got, want)
    # and the epoch after continues identically too
    assert epoch_order(resumed) == epoch_order(reference)


def test_state_dict_between_epochs():
    x, y = images(12)
    a = DataLoader(x, y, batch_size=5, seed=2)
    epoch_order(a)
    state = a.state_dict()
    assert state["position"] == 0
    b = DataLoader(x, y, batch_size=5, seed=0)
    b.load_state_dict(state)
    assert epoch_order(b) == epoch_order(a)
    with pytest.raises(ValueError, match="position"):
        b.load_state_dict({**state, "position": 99})


# --------------------------------------------------------------------------- transforms

def test_normalize_values():
    x = np.array([[0, 255], [51, 128]], dtype=np.uint8)
    out = Normalize(mean=0.1307, std=0.3081)(x)
    assert out.dtype == np.float32
    expected = (x / 255.0 - 0.1307) / 0.3081
    assert np.allclose(out, expected, atol=1e-6)
    floats = np.array([0.5, 1.0], dtype=np.float32)
    assert np.allclose(Normalize(0.5, 0.25)(floats), [0.0, 2.0])
    assert np.array_equal(floats, [0.5, 1.0])                # the input is left alone
    assert np.allclose(ToFloat()(x), x / 255.0)
    with pytest.raises(ValueError, match="std"):
        Normalize(0.0, 0.0)
    again = data.transform_from_config(json.loads(json.dumps(Normalize(0.1, 0.2).config())))
    assert isinstance(again, Normalize) and (again.mean, again.std) == (0.1, 0.2)
    assert isinstance(data.transform_from_config(None), ToFloat)


def test_loader_applies_normalize():
    x, y = images(8)
    xb, _ = next(iter(DataLoader(x, y, batch_size=8, shuffle=False,
                                 transform=Normalize(0.2, 0.5))))
    assert np.allclose(xb[:, 0], (x / 255.0 - 0.2) / 0.5, atol=1e-6)


@pytest.mark.slow
def test_normalize_mnist_statistics():
    root = mnist_root()
    from minicnn.data.datasets import load_mnist
    (x, _), _ = load_mnist(root, download=False, verify=False)
    out = Normalize(mean=0.1307, std=0.3081)(x)
    assert abs(out.mean(dtype=np.float64)) < 1e-3
    assert abs(out.std(dtype=np.float64) - 1.0) < 1e-3


# --------------------------------------------------------------------------- augmentation

def test_random_shift_moves_pixels_and_fills_zeros():
    x = np.zeros((2, 1, 5, 5), np.float32)
    x[:, 0, 2, 2] = 1.0
    x[1, 0, 0, 0] = 2.0
    out = RandomShift(2).apply(x, np.array([[1, -2], [-1, 2]]))
    assert out.shape == x.shape
    assert out[0, 0, 3, 0] == 1.0 and out[0].sum() == 1.0          # down 1, left 2
    assert out[1, 0, 1, 4] == 1.0 and out[1, 0, 0, 0] == 0.0        # up 1, right 2; 2.0 gone
    assert np.array_equal(RandomShift(0).apply(x, np.zeros((2, 2), int)), x)
    shifts = RandomShift(2).sample(np.random.default_rng(0), 1000)
    assert shifts.min() == -2 and shifts.max() == 2


def test_loader_augmentation_is_seeded_and_keeps_labels():
    x, y = images(16, 8, 8)
    x[:] = 0
    x[:, 4, 4] = 255
    a = [xb for xb, _ in DataLoader(x, y, batch_size=16, seed=1, augment=RandomShift(2))]
    b = [xb for xb, _ in DataLoader(x, y, batch_size=16, seed=1, augment=RandomShift(2))]
    assert np.array_equal(a[0], b[0])
    assert np.allclose(a[0].sum(axis=(1, 2, 3)), 1.0)          # each image keeps its one pixel
    assert len({tuple(np.argwhere(img[0])[0]) for img in a[0]}) > 1
