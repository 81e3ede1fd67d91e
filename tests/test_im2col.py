"""im2col / col2im: the documented column layout, the adjoint identity, memory layouts, errors."""
from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from minicnn.kernels.im2col import col2im, col2im_matmul, conv_output_size, im2col, pair

SEEDS = list(range(16))
GEOMETRY = ("kernel_size", "stride", "padding", "dilation")


def geometry(cfg):
    return {k: cfg[k] for k in GEOMETRY}


def random_input(cfg, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((cfg["n"], cfg["c"], cfg["h"], cfg["w"]))


def test_seed_list_covers_the_required_configurations():
    configs = [ref.conv_config(s) for s in SEEDS]
    assert {v for c in configs for v in c["stride"]} == {1, 2, 3}
    assert {v for c in configs for v in c["padding"]} == {0, 1, 2}
    assert {v for c in configs for v in c["dilation"]} == {1, 2}
    assert any(c["kernel_size"][0] != c["kernel_size"][1] for c in configs)
    assert {c["n"] for c in configs} == {1, 2} and {c["c"] for c in configs} == {1, 3}


@pytest.mark.parametrize("seed", SEEDS)
def test_im2col_matches_documented_layout(seed):
    cfg = ref.conv_config(seed)
    x = random_input(cfg, seed)
    cols = im2col(x, **geometry(cfg))
    expected = ref.im2col(x, **geometry(cfg))
    assert cols.shape == expected.shape
    assert cols.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(cols, expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_is_the_adjoint_of_im2col(seed):
    cfg = ref.conv_config(seed)
    rng = np.random.default_rng(100 + seed)
    x = random_input(cfg, seed)
    cols_shape = im2col(x, **geometry(cfg)).shape
    c = rng.standard_normal(cols_shape)
    lhs = float(np.sum(im2col(x, **geometry(cfg)) * c))
    back = col2im(c, x.shape, **geometry(cfg))
    assert back.shape == x.shape
    rhs = float(np.sum(x * back))
    scale = float(np.sum(np.abs(x * back))) + 1e-30
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs)


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_im2col_fills_a_view_into_a_wider_matrix(seed):
    """Conv2D keeps its bias column of ones beside the columns: im2col writes the view only."""
    cfg = ref.conv_config(seed)
    x = random_input(cfg, seed)
    expected = ref.im2col(x, **geometry(cfg))
    rows, k = int(np.prod(expected.shape[:3])), int(np.prod(expected.shape[3:]))
    wide = np.full((rows, k + 1), 7.0)
    view = wide[:, :k].reshape(expected.shape)
    assert np.shares_memory(view, wide)
    assert im2col(x, **geometry(cfg), out=view) is view
    np.testing.assert_array_equal(wide[:, :k].reshape(expected.shape), expected)
    assert (wide[:, k] == 7.0).all()


SAME_STRIDE_1 = [  # the centre tap covers the image: col2im_matmul starts from its product
    {"n": 2, "c": 3, "o": 4, "h": 5, "w": 6, "kernel_size": (3, 3), "stride": (1, 1),
     "padding": (1, 1), "dilation": (1, 1)},
    {"n": 1, "c": 2, "o": 3, "h": 7, "w": 4, "kernel_size": (5, 3), "stride": (1, 1),
     "padding": (4, 2), "dilation": (2, 2)},
]


@pytest.mark.parametrize("cfg", [ref.conv_config(s) for s in SEEDS] + SAME_STRIDE_1)
def test_col2im_matmul_equals_col2im_of_the_product(cfg):
    rng = np.random.default_rng(7)
    x = random_input(cfg, 0)
    n, ho, wo, kh, kw, c = im2col(x, **geometry(cfg)).shape
    dy = rng.standard_normal((n * ho * wo, cfg["o"]))
    w = rng.standard_normal((kh * kw * c, cfg["o"]))
    expected = col2im((dy @ w.T).reshape(n, ho, wo, kh, kw, c), x.shape, **geometry(cfg))
    got = col2im_matmul(dy, w, x.shape, **geometry(cfg))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_col2im_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="col2im_matmul: expected dy"):
        col2im_matmul(np.zeros((10, 2)), np.zeros((9, 2)), (1, 1, 4, 4), 3, padding=1)


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_col2im_of_ones_counts_window_coverage(seed):
    cfg = ref.conv_config(seed)
    x = random_input(cfg, seed)
    cols = ref.im2col(np.ones_like(x), **geometry(cfg))   # 1 where a window reads the pixel
    counts = col2im(np.ones_like(cols), x.shape, **geometry(cfg))
    # pixel (r, q) is read once per (window, tap) that lands on it
    expected = np.zeros(x.shape)
    kh, kw = cfg["kernel_size"]
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    for oh in range(cols.shape[1]):
        for ow in range(cols.shape[2]):
            for i in range(kh):
                for j in range(kw):
                    r, q = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                    if 0 <= r < cfg["h"] and 0 <= q < cfg["w"]:
                        expected[:, :, r, q] += 1
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_channels_last_memory_gives_identical_results(seed):
    cfg = ref.conv_config(seed)
    x = random_input(cfg, seed)
    x_cl = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    assert x_cl.shape == x.shape
    assert cfg["c"] == 1 or not x_cl.flags["C_CONTIGUOUS"]   # one channel: both layouts agree
    np.testing.assert_array_equal(im2col(x_cl, **geometry(cfg)), im2col(x, **geometry(cfg)))
    cols = np.random.default_rng(seed).standard_normal(im2col(x, **geometry(cfg)).shape)
    # col2im's input is always C-contiguous columns; check a non-contiguous (sliced) one too
    wide = np.concatenate([cols, cols], axis=-1)[..., :cols.shape[-1]]
    np.testing.assert_array_equal(col2im(wide, x.shape, **geometry(cfg)),
                                  col2im(cols, x.shape, **geometry(cfg)))


def test_out_buffer_is_filled_and_reused():
    cfg = ref.conv_config(3)
    x = random_input(cfg, 3)
    first = im2col(x, **geometry(cfg))
    buf = np.full(first.shape, 123.0)                 # garbage everywhere, padding included
    again = im2col(x, **geometry(cfg), out=buf)
    assert again is buf
    np.testing.assert_array_equal(again, first)
    wrong = np.zeros((1, 1))                          # wrong shape: ignored, a new array returned
    np.testing.assert_array_equal(im2col(x, **geometry(cfg), out=wrong), first)
    wrong_dtype = np.zeros(first.shape, dtype=np.float32)
    result = im2col(x, **geometry(cfg), out=wrong_dtype)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(dtype)
    cols = im2col(x, 3, 1, 1)
    assert cols.dtype == dtype
    assert col2im(cols, x.shape, 3, 1, 1).dtype == dtype


def test_output_size_formula_matches_pytorch_documentation():
    # floor((H + 2p - d(k-1) - 1) / s + 1), spot values worked out by hand
    assert conv_output_size(28, 3, 1, 0, 1) == 26
    assert conv_output_size(28, 3, 1, 1, 1) == 28
    assert conv_output_size(7, 3, 2, 1, 1) == 4
    assert conv_output_size(10, 3, 3, 2, 2) == 4
    assert conv_output_size(5, 5, 1, 0, 1) == 1
    assert conv_output_size(4, 5, 1, 0, 1) == 0


def test_too_small_input_raises():
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        im2col(x, 3)
    with pytest.raises(ValueError, match="smaller than the dilated kernel 5x5"):
        im2col(np.zeros((1, 1, 4, 4)), 3, dilation=2)


def test_col2im_rejects_wrong_column_shape():
    cols = np.zeros((1, 3, 3, 3, 3, 2))
    with pytest.raises(ValueError, match=r"col2im: expected columns of shape"):
        col2im(cols, (1, 1, 5, 5), 3)


@pytest.mark.parametrize("bad", [1.5, True, (1, 2, 3), (1, 2.0), "3", None])
def test_pair_rejects_non_ints(bad):
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
        pair(bad, "kernel_size")


def test_pair_accepts_int_tuple_and_list():
    assert pair(3) == (3, 3)
    assert pair((2, 3)) == (2, 3)
    assert pair([4, 1]) == (4, 1)

