"""Augmentation: each one against its definition written out per image, reproducible for a
seed, per sample, dtype kept, configs and specs round-trip, one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.data import DataLoader, RandomShift
from minicnn.data.augment import (
    Compose,
    Cutout,
    RandomAffine,
    RandomCrop,
    RandomHorizontalFlip,
    augmentation_from_config,
    parse_augmentation,
)


def images(n=6, c=2, h=9, w=11, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, c, h, w)).astype(np.uint8)


def test_random_crop_is_pad_then_crop_per_image():
    x = images()
    crop = RandomCrop(3)
    params = crop.sample(np.random.default_rng(1), len(x))
    out = crop.apply(x, params)
    for k in range(len(x)):
        dy, dx = params[k]
        padded = np.pad(x[k], ((0, 0), (3, 3), (3, 3)))
        top, left = 3 - int(dy), 3 - int(dx)          # offset of the crop in the padded image
        np.testing.assert_array_equal(out[k], padded[:, top:top + 9, left:left + 11])
    assert out.dtype == np.uint8 and len({tuple(p) for p in params}) > 1


def test_flip_mirrors_the_chosen_images_only():
    x = images(n=200)
    flip = RandomHorizontalFlip(0.3)
    params = flip.sample(np.random.default_rng(2), len(x))
    out = flip.apply(x, params)
    for k in range(len(x)):
        want = x[k, :, :, ::-1] if params[k, 0] else x[k]
        np.testing.assert_array_equal(out[k], want)
    assert 0.2 < params.mean() < 0.4


def test_affine_identity_rotation_and_shift():
    x = images(n=3, h=9, w=9)
    affine = RandomAffine(90)
    same = np.array([[0.0, 0.0, 0.0, 1.0]] * 3)
    np.testing.assert_array_equal(affine.apply(x, same), x)
    quarter = np.array([[np.pi / 2, 0.0, 0.0, 1.0]] * 3)     # output (i, j) reads a rotation
    rotated = affine.apply(x, quarter)
    for k in range(3):
        assert np.array_equal(rotated[k], np.rot90(x[k], 1, axes=(1, 2))) or \
            np.array_equal(rotated[k], np.rot90(x[k], -1, axes=(1, 2)))
    shift = np.array([[0.0, 2 / 9, -1 / 9, 1.0]] * 3)        # 2 rows down, 1 column left
    moved = affine.apply(x, shift)
    np.testing.assert_array_equal(moved[:, :, 2:, :-1], x[:, :, :-2, 1:])
    assert (moved[:, :, :2] == 0).all() and (moved[:, :, :, -1] == 0).all()


def test_affine_draws_are_bounded_and_float_input_stays_float():
    affine = RandomAffine(15, translate=0.1, scale=(0.9, 1.1))
    p = affine.sample(np.random.default_rng(3), 1000)
    assert np.abs(np.rad2deg(p[:, 0])).max() <= 15 and np.abs(p[:, 1:3]).max() <= 0.1
    assert 0.9 <= p[:, 3].min() and p[:, 3].max() <= 1.1
    x = images().astype(np.float32)
    out = affine.apply(x, p[:6])
    assert out.dtype == np.float32 and out.shape == x.shape


def test_cutout_zeros_one_square_clipped_at_the_border():
    x = images(n=2, h=10, w=10)
    cut = Cutout(4)
    params = np.array([[0.5, 0.5, 1.0], [0.0, 0.95, 1.0]])   # centre (5, 5); corner (0, 9)
    out = cut.apply(x, params)
    zero = out == 0
    assert zero[0].all(axis=0)[3:7, 3:7].all() and zero[0].all(axis=0).sum() == 16
    assert zero[1].all(axis=0)[0:2, 7:10].all() and zero[1].all(axis=0).sum() == 6
    untouched = cut.apply(x, np.array([[0.5, 0.5, 0.0]] * 2))
    np.testing.assert_array_equal(untouched, x)


def test_loader_draws_are_reproducible_per_seed_and_resume_mid_epoch():
    x, y = images(n=40), np.arange(40) % 3
    aug = parse_augmentation("crop=2,flip,affine=10,cutout=3")

    def batches(seed):
        loader = DataLoader(x, y, batch_size=8, shuffle=True, seed=seed, augment=aug)
        return [b.copy() for b, _ in loader]
    a, b, c = batches(5), batches(5), batches(6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))
    loader = DataLoader(x, y, batch_size=8, shuffle=True, seed=5, augment=aug)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [b.copy() for b, _ in it]
    again = DataLoader(x, y, batch_size=8, shuffle=True, seed=0, augment=aug)
    again.load_state_dict(state)
    assert all(np.array_equal(p, q) for p, q in zip(rest, [b for b, _ in again]))


@pytest.mark.parametrize("spec,kind", [
    ("crop=2,flip", Compose), ("affine=10", RandomAffine), ("2", RandomShift),
    ("shift=1,cutout=8", Compose), ("flip=0.2", RandomHorizontalFlip)])
def test_specs_and_configs_round_trip(spec, kind):
    aug = parse_augmentation(spec)
    assert isinstance(aug, kind)
    again = augmentation_from_config(aug.config())
    assert again.config() == aug.config()
    assert parse_augmentation("none") is None and parse_augmentation(0) is None


@pytest.mark.parametrize("spec,message", [
    ("crop=x", "augmentation 'crop=x': expected shift=K"),
    ("rotate=5", "augmentation 'rotate=5': expected"),
    ("flip=2", "augmentation 'flip=2': expected"),
    ("affine=inf", "augmentation 'affine=inf': expected")])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError) as e:
        parse_augmentation(spec)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_fit_records_the_augmentation_in_the_checkpoint(tmp_path):
    from minicnn.layers import Dense, Flatten
    from minicnn.saving.checkpoint import load_checkpoint
    x, y = images(n=16, c=1, h=4, w=4), np.arange(16) % 2
    model = minicnn.Sequential([Flatten(), Dense(16, 2)], input_shape=(1, 4, 4))
    loader = DataLoader(x, y, batch_size=8, seed=0, augment=parse_augmentation("crop=1,flip"))
    minicnn.training.fit(model, loader, 1, minicnn.training.SGD(model.parameters(), 0.1),
                         checkpoint=tmp_path / "m.npz", progress=False, verbose=False)
    meta = load_checkpoint(tmp_path / "m.npz").meta
    assert augmentation_from_config(meta["augment"]).config() == loader.augment.config()
